//! Clients that stop reading. A reply is sent straight from the pool buffer its request came
//! in, so a client that sends and never reads would keep those buffers for ever, behind a send
//! that never ends; enough such clients would hold the whole pool, and nobody else would be
//! served. So the replies of a client that is not reading move out of the pool into copies of
//! the connection's own (at most MAX_HELD of them, as before), and its receive stops until its
//! sends move again: the client holds its own memory, bounded, not the pool everyone shares.
//!
//! A client counts as not reading when MAX_HELD of its replies wait, or when the pool runs dry
//! while its send has waited longer than STALLED. A timeout on the ring looks again after
//! STALLED while anyone waits for a buffer: a send may only then have waited long enough.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::opcode;

use super::{Conn, Op, Server};

/// A send waiting this long when the pool runs dry is taken for a client that does not read.
pub const STALLED: Duration = Duration::from_millis(10);

impl Server {
    /// Copies the connection's replies out of the pool and returns their buffers. The one
    /// being sent may be in the kernel's hands: its send is cancelled, and it is copied when
    /// that comes back (`flush`).
    pub(super) fn spill(&mut self, fd: RawFd) {
        let (conn, bufs) = self.conn(fd);
        let returned = bufs.spill(&mut conn.held, false);
        if conn.held.sending_pooled()
            && let Some((key, _)) = conn.sending.take()
        {
            self.ring.cancel(key, Op::Send(fd), Op::Cancel);
        }
        if returned > 0 {
            self.resume_starved();
        }
    }

    /// The pool is dry: every connection whose send has waited longer than STALLED gives its
    /// buffers back, and stops receiving. At most once per STALLED: it looks at everyone.
    pub(super) fn spill_stalled(&mut self) {
        if self.looked.elapsed() < STALLED {
            return;
        }
        self.looked = Instant::now();
        let fds: Vec<RawFd> = (self.conns.iter().flatten())
            .filter(|c| stalled(c) && c.held.pooled())
            .map(|c| c.fd.as_raw_fd())
            .collect();
        for fd in fds {
            self.spill(fd);
            self.settle(fd);
        }
    }

    /// Looks again after STALLED (a timeout on the ring), unless a look is already coming.
    pub(super) fn arm_tick(&mut self) {
        if !self.ticking && !self.stopping {
            self.ticking = true;
            let entry = opcode::Timeout::new(&*self.tick).build();
            self.ring.submit(Op::Tick, entry);
        }
    }

    /// The timeout has come: look again, and again later while anyone waits for a buffer.
    pub(super) fn tick(&mut self) {
        self.ticking = false;
        if !self.stopping && self.bufs.someone_waits() {
            self.spill_stalled();
            self.resume_starved();
            self.arm_tick();
        }
    }
}

/// Whether the connection's send has waited longer than STALLED: its client is not reading.
pub fn stalled(conn: &Conn) -> bool {
    conn.sending
        .is_some_and(|(_, since)| since.elapsed() > STALLED)
}
