//! io_uring: the process queues whole operations (accept, receive, send, close) on a submission
//! ring, the kernel performs them, and each one comes back as a completion carrying its result.
//!
//! Receives take their buffers from one shared pool (`bufring.rs`): a multishot receive, armed
//! once per connection, takes a buffer only when data arrives, so an idle connection holds
//! none; the buffer goes out as the reply, then back to the pool. `ring.rs` holds the rings, the
//! operations in flight and the system call, which `--sqpoll` makes rare; `uring/stall.rs`
//! copies the replies of clients that stop reading out of the pool. A connection lives in
//! `conns`, indexed by its descriptor, until no operation of its own is in flight.

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Instant;

use anyhow::Context;
use io_uring::types::{CancelBuilder, Fd, Timespec};
use io_uring::{cqueue, opcode};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{SockaddrStorage, getpeername};
use support::{STATS, count, say, trace};

use crate::bufring::{self, BufRing, Held};
use crate::ring::{Ring, accept_once, accepted, stop_signal_fd};

mod stall;
use stall::{STALLED, stalled};

/// Buffers a connection may hold (received, reply not yet sent) before its receive is
/// cancelled: a client that sends without reading is echoed this far ahead, then waits, and
/// cannot empty the shared pool on its own.
const MAX_HELD: usize = 4;

struct Conn {
    fd: OwnedFd,
    peer: String,
    /// Buffers received and not yet wholly sent back.
    held: Held,
    receive: Receive,
    /// Whether the armed receive is multishot (on Linux 5.19 the first ones fail, EINVAL).
    multishot: bool,
    /// The send in flight, if any: its key, to cancel it (`spill`), and when it began.
    sending: Option<(u64, Instant)>,
    /// End of file or an error: closed once its replies are sent and its receive is over.
    ended: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Receive {
    /// A receive is in flight: its key, to cancel it.
    Armed(u64),
    /// In flight, and asked to stop (too many buffers held, or the connection failed).
    Cancelling,
    /// None in flight.
    Idle,
}

/// One operation in flight; a connection's operations name it by its descriptor.
#[derive(Clone, Copy, PartialEq)]
enum Op {
    /// Multishot accept: one submission, one completion per connection (flag MORE) until one
    /// without MORE says it has stopped. A multishot receive works the same way.
    Accept,
    /// Out of descriptors (this errno): one accept into the spare descriptor's slot.
    Refuse(i32),
    Recv(RawFd),
    Send(RawFd),
    Close,
    /// Waiting for SIGINT or SIGTERM: a poll on the signalfd.
    Signal,
    /// STALLED has passed since a receive found the pool dry: look for stalled sends again.
    Tick,
    /// Cancelling: a connection's receive, or on stop every operation at once.
    Cancel,
}

struct Server {
    ring: Ring<Op>,
    /// Declared after `ring`, so dropped after it: the kernel never outlives its buffers.
    bufs: BufRing,
    listener: TcpListener,
    signals: SignalFd,
    conns: Vec<Option<Conn>>,
    /// Multishot receive (Linux 6.0)? Learnt from the first receive.
    multishot: bool,
    spare: Option<File>,
    clients: usize,
    stopping: bool,
    /// When `spill_stalled` last looked: at most once per STALLED, since it looks at everyone.
    looked: Instant,
    /// A Tick is in flight, and how long it waits (the kernel reads it on submission).
    ticking: bool,
    tick: Box<Timespec>,
}

pub fn run(args: &crate::Args) -> anyhow::Result<()> {
    // ANCHOR: setup
    // Set-up: the ring and its buffers first, so that a kernel without them fails before we
    // announce anything. The listener stays blocking: the process never calls accept itself.
    let ring = Ring::new(args)?;
    let bufs = BufRing::new(ring.uring(), args.buffers)?;
    let listener = support::listen(args.common.addr)?;
    let signals = stop_signal_fd()?;
    support::announce(&listener)?;
    let mut server = Server {
        ring,
        bufs,
        listener,
        signals,
        conns: Vec::new(),
        multishot: !args.simulate_old_kernel,
        spare: support::reserve_descriptor(),
        clients: 0,
        stopping: false,
        looked: Instant::now(),
        ticking: false,
        tick: Box::new(Timespec::from(STALLED)),
    };
    server.arm_accept();
    server.arm_signal();
    // ANCHOR_END: setup

    while !support::stop_requested() {
        // ANCHOR: loop
        // Phase 1: submit and wait (`Ring::wait`): hand the kernel every operation queued since
        // the last time, and sleep until at least one has completed. Ctrl-C comes back as a
        // completion too (`stop_signal_fd`), so the loop sees it however busy it is.
        match server.ring.wait() {
            Ok(()) => {}
            Err(e) if support::interrupted(&e) => continue, // wait again
            Err(e) => return Err(e).context("io_uring_enter"),
        }
        STATS.wakeups.add(1);
        let completions = server.ring.completions();
        let n = count(completions.len() as u64, "completion", "completions");
        let in_flight = count(server.ring.in_flight() as u64, "operation", "operations");
        trace!("{n}, {in_flight} in flight");

        // Phase 2: accept, read and write all arrive here the same way, as completions, in
        // the order the kernel finished them; each may queue the connection's next operation.
        for (op, result, flags) in completions {
            server.complete(op, result, flags);
        }
        // ANCHOR_END: loop
    }
    server.shutdown()?;
    server.ring.summary(vec![server.bufs.ran_dry()]);
    Ok(())
}

impl Server {
    /// The connection, and beside it the pool its buffers come from.
    fn conn(&mut self, fd: RawFd) -> (&mut Conn, &mut BufRing) {
        let conn = self.conns[fd as usize]
            .as_mut()
            .expect("no such connection");
        (conn, &mut self.bufs)
    }

    fn arm_accept(&mut self) {
        let fd = Fd(self.listener.as_raw_fd());
        let entry = opcode::AcceptMulti::new(fd).flags(libc::SOCK_CLOEXEC);
        self.ring.submit(Op::Accept, entry.build());
    }

    fn arm_signal(&mut self) {
        let fd = Fd(self.signals.as_raw_fd());
        let entry = opcode::PollAdd::new(fd, libc::POLLIN as u32).build();
        self.ring.submit(Op::Signal, entry);
    }

    fn recv(&mut self, fd: RawFd) {
        let key = self
            .ring
            .submit(Op::Recv(fd), bufring::recv(Fd(fd), self.multishot));
        let multishot = self.multishot;
        let conn = self.conn(fd).0;
        (conn.receive, conn.multishot) = (Receive::Armed(key), multishot);
    }

    /// Sends what is left of the connection's oldest reply.
    fn send(&mut self, fd: RawFd) {
        if self.stopping {
            return; // a send might never end (the client does not read): not now
        }
        let (conn, bufs) = self.conn(fd);
        let rest = bufs.unsent(&conn.held);
        let entry = opcode::Send::new(Fd(fd), rest.as_ptr(), rest.len() as u32);
        let entry = entry.flags(libc::MSG_NOSIGNAL).build();
        let key = self.ring.submit(Op::Send(fd), entry);
        self.conn(fd).0.sending = Some((key, Instant::now()));
    }

    // ANCHOR: settle
    /// After each completion of a connection's: arm its receive again, stop it (back-pressure,
    /// or it failed; no data is lost: the rest waits in the socket), or close the connection
    /// once it is finished and nothing of its own is in flight.
    fn settle(&mut self, fd: RawFd) {
        let Some(conn) = self.conns.get_mut(fd as usize).and_then(Option::as_mut) else {
            return; // gone already (it waited for a buffer, then left)
        };
        // Back-pressure: too many replies owed, or a client that has not read for a while.
        let full = conn.held.len() >= MAX_HELD || stalled(conn);
        match conn.receive {
            Receive::Armed(key) if full || conn.ended => {
                conn.receive = Receive::Cancelling;
                self.ring.cancel(key, Op::Recv(fd), Op::Cancel);
            }
            Receive::Idle if !conn.ended && !full && !self.stopping => self.recv(fd),
            Receive::Idle if conn.ended && conn.held.len() == 0 => {
                let conn = self.conns[fd as usize].take().expect("checked above");
                self.clients -= 1;
                let n = count(self.clients as u64, "client", "clients");
                trace!("{}: closed ({n})", conn.peer);
                let entry = opcode::Close::new(Fd(conn.fd.into_raw_fd()));
                self.ring.submit(Op::Close, entry.build());
            }
            _ => {}
        }
    }
    // ANCHOR_END: settle

    // ANCHOR: complete
    /// One completion: the result of an operation, the data already copied.
    fn complete(&mut self, op: Op, result: i32, flags: u32) {
        match op {
            Op::Cancel | Op::Close => {}
            Op::Recv(fd) => self.handle_client_data(fd, result, flags),
            Op::Send(fd) => self.flush(fd, result),
            // Shutting down: each remaining operation ends here, and dropping it closes it.
            Op::Accept | Op::Refuse(_) if self.stopping => drop(accepted(result)),
            Op::Tick => self.tick(),
            _ if self.stopping => {}
            Op::Accept => match accepted(result) {
                // The connection stays queued, and accepting again would fail again at once,
                // for ever. Give back the spare descriptor and accept into its slot.
                Err(e) if support::out_of_descriptors(&e) => {
                    drop(self.spare.take());
                    let entry = accept_once(Fd(self.listener.as_raw_fd()));
                    self.ring.submit(Op::Refuse(-result), entry);
                }
                other => {
                    self.handle_new_connection(other);
                    if !cqueue::more(flags) {
                        self.arm_accept(); // the multishot accept has stopped: start another
                    }
                }
            },
            Op::Refuse(errno) => {
                // accept fails before it looks for a connection, so this one may have waited
                // for the next. If a descriptor is free beside the spare, clients have left
                // since: serve it. If not, close it unserved and take the spare back.
                self.spare = support::reserve_descriptor();
                match accepted(result) {
                    Ok(fd) if self.spare.is_none() => {
                        drop(fd);
                        let why = io::Error::from_raw_os_error(errno);
                        say!("accept: {why}; closing a connection unserved");
                        self.spare = support::reserve_descriptor();
                    }
                    other => self.handle_new_connection(other),
                }
                self.arm_accept();
            }
            // Ctrl-C or SIGTERM is pending: take it, and the loop condition ends the loop.
            Op::Signal => {
                let info = self.signals.read_signal().ok().flatten();
                match info.and_then(|info| Signal::try_from(info.ssi_signo as i32).ok()) {
                    Some(signal) => support::record_stop(signal),
                    None => self.arm_signal(), // nothing to read after all: watch again
                }
            }
        }
    }
    // ANCHOR_END: complete

    // ANCHOR: handle_new_connection
    /// A completed accept: a connection to serve, or why there is none.
    fn handle_new_connection(&mut self, accepted: io::Result<OwnedFd>) {
        let fd = match accepted {
            Ok(fd) => fd,
            // E.g. ECONNABORTED: the client gave up before it was accepted.
            Err(e) => return trace!("accept: {e}"),
        };
        STATS.connections.add(1);
        self.clients += 1;
        // Multishot accept reports no address; ask for one only when tracing. A client that
        // has reset already has none (ENOTCONN).
        let peer = match support::verbosity() {
            0 => String::new(),
            _ => getpeername::<SockaddrStorage>(fd.as_raw_fd()).map_or_else(
                |_| format!("fd {} (gone already)", fd.as_raw_fd()),
                |a| a.to_string(),
            ),
        };
        let n = count(self.clients as u64, "client", "clients");
        trace!("{peer}: connected ({n})");
        let raw = fd.as_raw_fd();
        if self.conns.len() <= raw as usize {
            self.conns.resize_with(raw as usize + 1, || None);
        }
        let (held, receive, ended) = (Held::default(), Receive::Idle, false);
        let (multishot, sending) = (self.multishot, None);
        let conn = Conn {
            fd,
            peer,
            held,
            receive,
            multishot,
            sending,
            ended,
        };
        self.conns[raw as usize] = Some(conn);
        self.recv(raw);
    }
    // ANCHOR_END: handle_new_connection

    // ANCHOR: handle_client_data
    /// A completed receive: the bytes are already in a pooled buffer, named by the flags.
    fn handle_client_data(&mut self, fd: RawFd, result: i32, flags: u32) {
        let (conn, bufs) = self.conn(fd);
        if !cqueue::more(flags) {
            conn.receive = Receive::Idle; // this receive is over
        }
        match result {
            n if n > 0 => {
                let bid = cqueue::buffer_select(flags).expect("data without a buffer");
                STATS.bytes_in.add(n as u64);
                support::transform(bufs.take(&mut conn.held, bid, n as usize));
                match conn.held.len() {
                    1 => self.send(fd), // nothing else being sent: send it now
                    MAX_HELD.. => self.spill(fd),
                    _ => {}
                }
            }
            // The pool is empty; the data waits in the socket. Arm again when a buffer comes
            // back (`flush`), not now: that would fail again at once. If we hold none, the
            // completions not yet read hold them all, and arming again is safe.
            e if -e == libc::ENOBUFS && !conn.ended => {
                trace!("{}: no free buffer; receiving later", conn.peer);
                bufs.wait_for_one(fd);
                self.spill_stalled();
                self.arm_tick();
                if self.bufs.held() == 0 {
                    self.resume_starved();
                }
                return;
            }
            // We cancelled it (`settle`): armed again once fewer buffers are held. (Or no
            // buffer, but the connection has ended: nothing more to receive.)
            e if -e == libc::ECANCELED || -e == libc::ENOBUFS => {}
            // Multishot receive is Linux 6.0: on 5.19, one receive per submission.
            e if -e == libc::EINVAL && conn.multishot => {
                trace!("no multishot receive on this kernel: one receive per submission");
                self.multishot = false;
            }
            // EOF, or a reset and the like: drop this client once its replies are sent.
            // Everything received before it is held, so nothing is lost.
            result => {
                if result < 0 {
                    let err = io::Error::from_raw_os_error(-result);
                    trace!("{}: recv: {err}; closing", conn.peer);
                }
                conn.ended = true;
            }
        }
        self.settle(fd);
        if result <= 0 {
            self.resume_starved(); // it took no buffer: one that was woken for it may be free
        }
    }
    // ANCHOR_END: handle_client_data

    // ANCHOR: flush
    /// A completed send. Its buffer goes back to the pool once the whole reply has gone; then
    /// a receive stopped for back-pressure may be armed again, and those waiting for a buffer.
    fn flush(&mut self, fd: RawFd, result: i32) {
        let (conn, bufs) = self.conn(fd);
        conn.sending = None;
        if result == -libc::ECANCELED {
            // We cancelled it (`spill`): nothing was sent. Copy it out, and send the copy.
            bufs.spill(&mut conn.held, true);
            self.send(fd);
        } else if result < 0 {
            let err = io::Error::from_raw_os_error(-result);
            trace!("{}: send: {err}; closing", conn.peer);
            conn.ended = true;
            bufs.release(&mut conn.held);
        } else {
            STATS.bytes_out.add(result as u64);
            bufs.sent(&mut conn.held, result as usize);
            if conn.held.len() > 0 {
                self.send(fd); // the rest of a short send, or the next reply
            }
        }
        self.settle(fd);
        self.resume_starved();
    }
    // ANCHOR_END: flush

    /// Buffers have come back: arm the receives that found the pool empty, longest waiting
    /// first, one per free buffer; a loser waits for the next one, never a busy retry. Those
    /// armed since (by their own send's completion) or closed are passed over, at no cost.
    fn resume_starved(&mut self) {
        let mut free = self.bufs.free();
        while free > 0
            && let Some(fd) = self.bufs.next_waiting()
        {
            let receive = |s: &Self| s.conns.get(fd as usize)?.as_ref().map(|c| c.receive);
            if let Some(Receive::Idle) = receive(self) {
                self.settle(fd);
                free -= usize::from(matches!(receive(self), Some(Receive::Armed(_))));
            }
        }
    }

    // ANCHOR: shutdown
    /// On stop: cancel everything in flight, wait for every completion (each one is the kernel
    /// saying it no longer uses a buffer or descriptor), and only then free anything.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        self.stopping = true;
        // One entry cancels every operation: IORING_ASYNC_CANCEL_ANY (Linux 5.19).
        let entry = opcode::AsyncCancel2::new(CancelBuilder::any()).build();
        self.ring.submit(Op::Cancel, entry);
        while self.ring.in_flight() > 0 {
            match self.ring.wait() {
                Err(e) if !support::interrupted(&e) => return Err(e).context("io_uring_enter"),
                _ => {}
            }
            for (op, result, flags) in self.ring.completions() {
                self.complete(op, result, flags);
            }
        }
        Ok(())
    }
    // ANCHOR_END: shutdown
}

impl Drop for Server {
    /// With operations still in flight (an error or a panic left the loop early), the kernel
    /// may yet write into their buffers: leak them rather than free them.
    fn drop(&mut self) {
        if self.ring.in_flight() > 0 {
            self.bufs.leak();
        }
    }
}
