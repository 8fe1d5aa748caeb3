//! A provided-buffer ring (Linux 5.19): one pool of receive buffers that every connection
//! shares. The kernel takes a buffer from the ring only when a receive has data to put in it,
//! and the completion says which one; we return it once its reply has been sent.
//!
//! The ring is an array of `{addr, len, bid}` entries in our memory, registered once. We write
//! entries at the tail and publish the tail; the kernel consumes them from the head. Memory is
//! bounded by the pool, not by the number of clients: `count` buffers of `size` bytes, and a
//! page of a buffer is resident only once some receive has written to it.

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd};
use io_uring::{IoUring, opcode, squeue};

/// The buffer group our receives name (one pool, so one group).
const GROUP: u16 = 0;
/// Bytes per buffer: the most one receive completion carries.
const BUF_SIZE: usize = 4096;
/// The receive's flags (`ioprio`): IORING_RECV_MULTISHOT, and IORING_RECVSEND_POLL_FIRST, which
/// waits for data before taking a buffer, so that arming a receive never takes one.
const RECV_MULTISHOT: u16 = 2;
const POLL_FIRST: u16 = 1;

// ANCHOR: recv
/// A receive that takes its buffer from the pool (BUFFER_SELECT): it names no buffer, and its
/// completion says which one the data went into. Multishot: one completion per arrival, until
/// one without the MORE flag says it has stopped.
pub fn recv(fd: Fd, multishot: bool) -> squeue::Entry {
    let flags = POLL_FIRST | if multishot { RECV_MULTISHOT } else { 0 };
    let entry = opcode::Recv::new(fd, std::ptr::null_mut(), 0).buf_group(GROUP);
    entry
        .ioprio(flags)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
}
// ANCHOR_END: recv

pub struct BufRing {
    /// The ring's entries, page-aligned as the kernel requires; `count` of them.
    entries: *mut BufRingEntry,
    layout: Layout,
    /// The buffers themselves, back to back. A Vec, not a Box: the kernel writes through
    /// pointers of its own while we hold this.
    bufs: Vec<u8>,
    size: usize,
    count: u16,
    /// Our copy of the tail: where the next returned buffer goes.
    tail: u16,
    /// Buffers the kernel has given us and we have not yet returned.
    held: usize,
    /// Connections whose receive found the pool empty (ENOBUFS), first come first, and how
    /// many times that was.
    waiting: VecDeque<RawFd>,
    ran_dry: u64,
}

/// The replies one connection owes, oldest first: received, not yet wholly sent back. The
/// first is being sent, `sent` bytes of it so far. Each is still in its pool buffer, or, once
/// its client stopped reading (`spill`), in a copy of the connection's own.
#[derive(Default)]
pub struct Held {
    bufs: VecDeque<Chunk>,
    sent: usize,
}

enum Chunk {
    Pool(u16, usize),
    Own(Box<[u8]>),
}

impl Held {
    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    /// Whether any of its replies is still in a pool buffer.
    pub fn pooled(&self) -> bool {
        self.bufs.iter().any(|c| matches!(c, Chunk::Pool(..)))
    }

    /// Whether the reply being sent is still in a pool buffer.
    pub fn sending_pooled(&self) -> bool {
        matches!(self.bufs.front(), Some(Chunk::Pool(..)))
    }
}

impl BufRing {
    // ANCHOR: new
    /// Allocates `count` buffers of BUF_SIZE bytes (a power of two, at most 32,768) and
    /// registers them with `ring`, or says in one line that this kernel has no buffer rings.
    /// The caller must drop the ring before this (field order), and must not drop this while
    /// an operation that may take a buffer is in flight.
    pub fn new(ring: &IoUring, count: u16) -> anyhow::Result<BufRing> {
        let size = BUF_SIZE;
        anyhow::ensure!(
            count.is_power_of_two(),
            "--buffers {count}: not a power of two"
        );
        let bytes = usize::from(count) * size_of::<BufRingEntry>();
        let layout = Layout::from_size_align(bytes, 4096).expect("ring layout");
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            handle_alloc_error(layout);
        }
        // Zeroed, so these pages stay out of RSS until a receive writes to them.
        let bufs = vec![0u8; usize::from(count) * size];
        let (tail, held, waiting, ran_dry) = (0, usize::from(count), VecDeque::new(), 0);
        let mut pool = BufRing {
            entries,
            layout,
            bufs,
            size,
            count,
            tail,
            held,
            waiting,
            ran_dry,
        };
        let submitter = ring.submitter();
        // SAFETY: the entries live as long as `pool`, which outlives the ring (see above).
        if let Err(err) =
            unsafe { submitter.register_buf_ring_with_flags(entries as u64, count, GROUP, 0) }
        {
            anyhow::bail!(
                "cannot use io_uring: no provided-buffer ring ({err}; they are new in Linux \
                 5.19); run with --backend posix"
            );
        }
        for bid in 0..count {
            pool.give_back(bid);
        }
        Ok(pool)
    }
    // ANCHOR_END: new

    /// A receive put `len` bytes in buffer `bid`: the connection holds it until it is sent
    /// back. Returns those bytes.
    pub fn take(&mut self, held: &mut Held, bid: u16, len: usize) -> &mut [u8] {
        self.held += 1;
        held.bufs.push_back(Chunk::Pool(bid, len));
        &mut self.bufs[usize::from(bid) * self.size..][..len]
    }

    /// What is left to send of the connection's oldest reply.
    pub fn unsent<'a>(&'a self, held: &'a Held) -> &'a [u8] {
        match &held.bufs[0] {
            Chunk::Pool(bid, len) => &self.bufs[usize::from(*bid) * self.size..][held.sent..*len],
            Chunk::Own(copy) => &copy[held.sent..],
        }
    }

    /// `n` more bytes of the oldest reply have been sent; once all of them have, its buffer
    /// goes back to the kernel.
    pub fn sent(&mut self, held: &mut Held, n: usize) {
        held.sent += n;
        let whole = match &held.bufs[0] {
            Chunk::Pool(_, len) => *len,
            Chunk::Own(copy) => copy.len(),
        };
        if held.sent == whole {
            held.sent = 0;
            if let Some(Chunk::Pool(bid, _)) = held.bufs.pop_front() {
                self.give_back(bid);
            }
        }
    }

    /// The connection failed: every buffer it holds goes back unsent.
    pub fn release(&mut self, held: &mut Held) {
        while let Some(chunk) = held.bufs.pop_front() {
            if let Chunk::Pool(bid, _) = chunk {
                self.give_back(bid);
            }
        }
        held.sent = 0;
    }

    /// The client has stopped reading: copy its replies out of the pool, and return their
    /// buffers, so that clients that never read cannot hold the pool that everyone shares.
    /// All but the one being sent, which the kernel may be reading (`with_first` once its
    /// send has been cancelled). Returns how many buffers went back.
    pub fn spill(&mut self, held: &mut Held, with_first: bool) -> usize {
        let mut returned = 0;
        let skip = usize::from(!with_first);
        for i in skip..held.bufs.len() {
            if let Chunk::Pool(bid, len) = held.bufs[i] {
                let from = if i == 0 { held.sent } else { 0 };
                let copy = self.bufs[usize::from(bid) * self.size..][from..len].into();
                held.bufs[i] = Chunk::Own(copy);
                if i == 0 {
                    held.sent = 0;
                }
                self.give_back(bid);
                returned += 1;
            }
        }
        returned
    }

    /// How many buffers we hold. When none, an empty pool can only mean that completions we
    /// have not read yet hold them all.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Connection `fd`'s receive found the pool empty: it waits for a buffer to come back.
    pub fn wait_for_one(&mut self, fd: RawFd) {
        self.waiting.push_back(fd);
        self.ran_dry += 1;
    }

    /// Buffers not in our hands: in the ring, or in completions not yet read (so, at least
    /// as many as the ring holds).
    pub fn free(&self) -> usize {
        usize::from(self.count) - self.held
    }

    pub fn someone_waits(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The connection that has waited longest for a buffer, if any; it waits no longer. It
    /// may have been armed again since, or have closed: the caller looks.
    pub fn next_waiting(&mut self) -> Option<RawFd> {
        self.waiting.pop_front()
    }

    /// How many receives found the pool empty, for the summary.
    pub fn ran_dry(&self) -> String {
        let n = self.ran_dry;
        support::count(n, "receive without a buffer", "receives without a buffer")
    }

    // ANCHOR: give_back
    /// Returns buffer `bid` to the kernel: write an entry at the tail, then publish the new
    /// tail with a release store, so that the kernel never sees the tail before the entry.
    fn give_back(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * self.size as u64;
        // SAFETY: `slot` is inside the ring, and the kernel reads no entry past the tail.
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.held -= 1;
        // SAFETY: the tail is a u16 inside the first entry, shared with the kernel.
        let tail = unsafe { &*BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
    // ANCHOR_END: give_back

    /// The kernel may still write into the buffers (an error left operations in flight):
    /// never free them.
    pub fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.bufs));
        self.count = 0;
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.count > 0 {
            // SAFETY: allocated in `new` with this layout; the ring that used it is gone.
            unsafe { dealloc(self.entries.cast(), self.layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waiting connections come out first come first, and a buffer that comes back is one more
    /// free.
    #[test]
    fn waiters_come_out_in_order_and_buffers_count() {
        let ring = IoUring::new(8).expect("io_uring");
        let mut pool = BufRing::new(&ring, 4).expect("buffer ring");
        let mut held = Held::default();
        for bid in 0..4 {
            pool.take(&mut held, bid, 10);
        }
        assert_eq!(pool.free(), 0);
        for fd in [10, 11, 12] {
            pool.wait_for_one(fd);
        }
        pool.sent(&mut held, 10);
        assert_eq!(pool.free(), 1);
        pool.release(&mut held);
        assert_eq!(pool.free(), 4);
        let order: Vec<_> = std::iter::from_fn(|| pool.next_waiting()).collect();
        assert_eq!(order, vec![10, 11, 12]);
        drop(ring);
    }
}
