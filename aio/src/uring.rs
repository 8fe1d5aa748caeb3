//! io_uring: the process queues whole operations (accept, recv, send, close) on a submission
//! ring, the kernel performs them, and each one comes back as a completion carrying its result.
//!
//! Each operation in flight is one `Op` value in `ops`, found again by the completion's
//! `user_data` (its index). The value owns what the kernel is using: the connection's socket
//! and buffer travel from `Recv` to `Send` to `Recv`, so a buffer lives exactly until the final
//! completion of the operation that uses it, and a connection has one operation at a time.

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use anyhow::Context;
use io_uring::types::{CancelBuilder, Fd};
use io_uring::{EnterFlags, IoUring, cqueue, opcode, squeue};
use support::{Counter, STATS, trace};

/// Bytes received per `Recv`. Each connection owns one buffer of this size for its whole life
/// (40 MiB at 10,000 clients); io_uring's provided-buffer rings are the remedy, not shown here.
const BUF_SIZE: usize = 4096;
/// Submission ring: how many operations can be queued before one `io_uring_enter`.
const SQ_ENTRIES: u32 = 4096;
/// Completion ring: more than one completion per connection at 10,000 clients. If it fills,
/// the kernel keeps the surplus (IORING_FEAT_NODROP) until the next `io_uring_enter`.
const CQ_ENTRIES: u32 = 32768;

/// Operations handed to the kernel, completions it returned, and the system calls that took.
static SUBMISSIONS: Counter = Counter::new();
static COMPLETIONS: Counter = Counter::new();
static ENTERS: Counter = Counter::new();

/// One client: its socket, its name for messages, and the buffer the kernel reads into.
struct Conn {
    fd: OwnedFd,
    peer: String,
    buf: Box<[u8]>,
}

/// One operation in flight, holding whatever its completion needs.
enum Op {
    /// Accept on the listener. Multishot: one submission, one completion per connection, until
    /// a completion without the MORE flag says it has stopped.
    Accept,
    /// Out of descriptors: accept one waiting connection only to close it (see
    /// `handle_new_connection`).
    Refuse,
    /// Receiving into the connection's buffer.
    Recv(Conn),
    /// Sending `buf[sent..len]`; a short send is resubmitted for the rest.
    Send { conn: Conn, len: usize, sent: usize },
    /// Closing a connection's descriptor.
    Close(String),
    /// Cancelling, on stop: every other operation (`all`), or the one named by its key.
    Cancel { all: bool },
}

struct Server {
    ring: IoUring,
    listener: TcpListener,
    /// Operations in flight, indexed by `user_data`; `free` lists the empty slots.
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Does this kernel have multishot accept (5.19)? Learnt from the first completion.
    multishot: bool,
    spare: Option<File>,
    clients: usize,
    stopping: bool,
}

pub fn run(args: &crate::Args) -> anyhow::Result<()> {
    // ANCHOR: setup
    // Set-up: the ring first, so that a kernel without io_uring fails before we announce
    // anything. The listener stays blocking: the process never calls accept itself.
    let ring = new_ring(args.simulate_no_uring)?;
    let listener = support::listen(args.common.addr)?;
    let wait_mask = support::catch_signals()?;
    let kernel_mask = kernel_sigset(&wait_mask);
    support::announce(&listener)?;
    let mut server = Server {
        ring,
        listener,
        ops: Vec::new(),
        free: Vec::new(),
        in_flight: 0,
        multishot: true,
        spare: support::reserve_descriptor(),
        clients: 0,
        stopping: false,
    };
    server.arm_accept();
    let mut completions: Vec<cqueue::Entry> = Vec::new();
    // ANCHOR_END: setup

    while !support::stop_requested() {
        // ANCHOR: wait
        // Phase 1: submit and wait. One io_uring_enter hands the kernel every operation queued
        // since the last one and sleeps until at least one has completed. The mask lets
        // Ctrl-C interrupt this wait and only this wait (EINTR), as pselect's does.
        ENTERS.add(1);
        let queued = server.ring.submission().len() as u32;
        let getevents = EnterFlags::GETEVENTS.bits();
        // SAFETY: every queued entry points into memory its `Op` owns (see `submit`), and
        // the mask is the kernel's sigset_t, passed with its own size.
        match unsafe {
            server
                .ring
                .submitter()
                .enter(queued, 1, getevents, Some(&kernel_mask))
        } {
            Ok(_) => {}
            Err(e) if support::interrupted(&e) => continue, // the loop condition decides
            // The completion ring is full and the kernel holds more: drain it first.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e).context("io_uring_enter"),
        }
        STATS.wakeups.add(1);
        completions.extend(server.ring.completion());
        trace!(
            "io_uring_enter: {} completions, {} operations in flight",
            completions.len(),
            server.in_flight
        );
        // ANCHOR_END: wait

        // Phase 2: accept, read and write all arrive here the same way, as completions, in
        // the order the kernel finished them; each may queue the connection's next operation.
        for cqe in completions.drain(..) {
            server.complete(cqe);
        }
    }
    server.shutdown()?;
    support::summary(&[
        ("submissions", SUBMISSIONS.get()),
        ("completions", COMPLETIONS.get()),
        ("io_uring_enter calls", ENTERS.get()),
    ]);
    let per_call = SUBMISSIONS.get() as f64 / ENTERS.get().max(1) as f64;
    eprintln!(
        "{}: {} operations in {} system calls: {per_call:.1} per io_uring_enter",
        support::program(),
        SUBMISSIONS.get(),
        ENTERS.get()
    );
    Ok(())
}

/// Creates the ring, or explains in one line why this kernel will not give us one.
fn new_ring(simulate_no_uring: bool) -> anyhow::Result<IoUring> {
    let ring = if simulate_no_uring {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    } else {
        IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
    };
    ring.map_err(|err| {
        let why = match err.raw_os_error() {
            Some(libc::ENOSYS) => "this kernel has no io_uring, or a seccomp filter hides it",
            Some(libc::EPERM) => {
                "switched off in /proc/sys/kernel/io_uring_disabled, or blocked by seccomp"
            }
            _ => "io_uring set-up failed",
        };
        anyhow::anyhow!("cannot use io_uring: {err} ({why}); run with --backend posix")
    })
}

/// The signal mask as the kernel's own sigset_t: its first 8 bytes, one bit per signal 1-64.
/// (glibc's sigset_t is 128 bytes, and io-uring 0.7's `SubmitArgs::sigmask` passes that size,
/// which the kernel rejects with EINVAL; so the wait passes this one, with its real size.)
fn kernel_sigset(mask: &nix::sys::signal::SigSet) -> [u8; 8] {
    let glibc: &libc::sigset_t = mask.as_ref();
    // SAFETY: glibc's sigset_t is 128 bytes; we read the first 8.
    unsafe { *(glibc as *const libc::sigset_t).cast::<[u8; 8]>() }
}

impl Server {
    // ANCHOR: submit
    /// Queues one operation. The entry points into buffers and descriptors that `op` owns, and
    /// `op` stays in `ops` until the operation's final completion: that is what keeps it safe.
    fn submit(&mut self, op: Op, entry: squeue::Entry) {
        let key = match self.free.pop() {
            Some(key) => key,
            None => {
                self.ops.push(None);
                self.ops.len() - 1
            }
        };
        self.ops[key] = Some(op);
        self.in_flight += 1;
        let entry = entry.user_data(key as u64);
        loop {
            // SAFETY: see above; the memory the entry names outlives the operation.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                SUBMISSIONS.add(1);
                return;
            }
            // The submission ring is full: hand what it holds to the kernel to make room.
            ENTERS.add(1);
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if support::interrupted(&e) => {}
                Err(e) => {
                    // The kernel never saw this entry, so dropping the operation (and closing
                    // its connection) here is safe.
                    trace!("io_uring_enter: {e}; dropping an operation");
                    self.take(key);
                    return;
                }
            }
        }
    }
    // ANCHOR_END: submit

    /// Removes the operation whose final completion has arrived.
    fn take(&mut self, key: usize) -> Option<Op> {
        let op = self.ops.get_mut(key)?.take()?;
        self.free.push(key);
        self.in_flight -= 1;
        Some(op)
    }

    fn arm_accept(&mut self) {
        let fd = Fd(self.listener.as_raw_fd());
        let entry = if self.multishot {
            opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            accept_once(fd)
        };
        self.submit(Op::Accept, entry);
    }

    fn recv(&mut self, mut conn: Conn) {
        let entry = opcode::Recv::new(
            Fd(conn.fd.as_raw_fd()),
            conn.buf.as_mut_ptr(),
            BUF_SIZE as u32,
        );
        self.submit(Op::Recv(conn), entry.build());
    }

    fn send(&mut self, conn: Conn, len: usize, sent: usize) {
        let rest = &conn.buf[sent..len];
        let entry = opcode::Send::new(Fd(conn.fd.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL);
        self.submit(Op::Send { conn, len, sent }, entry.build());
    }

    /// The connection is finished: its buffer is freed now (no operation uses it any more) and
    /// its descriptor is closed by one last operation.
    fn close(&mut self, conn: Conn) {
        self.clients -= 1;
        let entry = opcode::Close::new(Fd(conn.fd.into_raw_fd()));
        self.submit(Op::Close(conn.peer), entry.build());
    }

    // ANCHOR: complete
    /// One completion: the result of an operation, the data already copied.
    fn complete(&mut self, cqe: cqueue::Entry) {
        COMPLETIONS.add(1);
        let (key, result) = (cqe.user_data() as usize, cqe.result());
        // Only a multishot accept has more completions to come: it stays in its slot.
        if cqueue::more(cqe.flags()) {
            self.handle_new_connection(result);
            return;
        }
        let Some(op) = self.take(key) else { return };
        if self.stopping {
            // Shutting down: each operation ends here; dropping it closes its connection.
            match op {
                Op::Accept | Op::Refuse => _ = self.handle_new_connection(result),
                Op::Cancel { all } => self.handle_cancel(all, result),
                _ => {}
            }
            return;
        }
        match op {
            Op::Accept => {
                // A multishot accept stopped (an error, or a kernel without it); re-arm.
                if result == -libc::EINVAL && self.multishot {
                    trace!("no multishot accept on this kernel: one accept per connection");
                    self.multishot = false;
                } else if !self.handle_new_connection(result) {
                    return; // out of descriptors: `Refuse` re-arms when it completes
                }
                self.arm_accept();
            }
            Op::Refuse => {
                if result >= 0 {
                    // SAFETY: a successful accept returns a new descriptor that nothing owns.
                    drop(unsafe { OwnedFd::from_raw_fd(result) });
                    eprintln!("accept: out of descriptors; closed a connection unserved");
                }
                self.spare = support::reserve_descriptor();
                self.arm_accept();
            }
            Op::Recv(conn) => self.handle_client_data(conn, result),
            Op::Send { conn, len, sent } => self.flush(conn, len, sent, result),
            Op::Close(peer) => trace!("{peer}: closed ({} clients)", self.clients),
            Op::Cancel { all } => self.handle_cancel(all, result),
        }
    }
    // ANCHOR_END: complete

    // ANCHOR: handle_new_connection
    /// A completed accept. Returns false when out of descriptors, after queuing the remedy.
    fn handle_new_connection(&mut self, result: i32) -> bool {
        if result >= 0 {
            // SAFETY: a successful accept returns a new descriptor that nothing owns yet.
            let fd = unsafe { OwnedFd::from_raw_fd(result) };
            if self.stopping {
                return true; // dropping it closes it
            }
            STATS.connections.add(1);
            self.clients += 1;
            // Multishot accept reports no address; ask for one only when tracing.
            let peer = match support::verbosity() {
                0 => String::new(),
                _ => nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(result)
                    .map_or_else(|e| format!("fd {result} ({e})"), |a| a.to_string()),
            };
            trace!("{peer}: connected ({} clients)", self.clients);
            let buf = vec![0u8; BUF_SIZE].into_boxed_slice();
            self.recv(Conn { fd, peer, buf });
            return true;
        }
        let err = io::Error::from_raw_os_error(-result);
        if support::out_of_descriptors(&err) && !self.stopping {
            // The connection stays queued. Give back the spare descriptor and accept it into
            // that slot, only to close it (`Op::Refuse`), rather than fail again at once.
            drop(self.spare.take());
            let entry = accept_once(Fd(self.listener.as_raw_fd()));
            self.submit(Op::Refuse, entry);
            return false;
        }
        // ECANCELED on stop; ECONNABORTED when a client gave up before it was accepted.
        trace!("accept: {err}");
        true
    }
    // ANCHOR_END: handle_new_connection

    // ANCHOR: handle_client_data
    /// A completed receive: the bytes are already in `conn.buf`.
    fn handle_client_data(&mut self, mut conn: Conn, result: i32) {
        match result {
            // EOF. Everything received before it has been sent (we receive again only once
            // a reply is fully sent), so there is nothing left to flush: close.
            0 => self.close(conn),
            n if n > 0 => {
                let n = n as usize;
                STATS.bytes_in.add(n as u64);
                support::transform(&mut conn.buf[..n]);
                self.send(conn, n, 0);
            }
            // Reset and the like: drop this client only.
            err => {
                trace!(
                    "{}: recv: {}; closing",
                    conn.peer,
                    io::Error::from_raw_os_error(-err)
                );
                self.close(conn);
            }
        }
    }
    // ANCHOR_END: handle_client_data

    // ANCHOR: flush
    /// A completed send. Back-pressure: the next receive is queued only once the whole reply
    /// has gone, so a client that does not read stops being read, and holds one buffer.
    fn flush(&mut self, conn: Conn, len: usize, sent: usize, result: i32) {
        if result < 0 {
            trace!(
                "{}: send: {}; closing",
                conn.peer,
                io::Error::from_raw_os_error(-result)
            );
            return self.close(conn);
        }
        STATS.bytes_out.add(result as u64);
        let sent = sent + result as usize;
        if sent < len {
            self.send(conn, len, sent); // a short send: queue the rest
        } else {
            self.recv(conn);
        }
    }
    // ANCHOR_END: flush

    // ANCHOR: shutdown
    /// On stop: cancel everything in flight, wait for every completion (each one is the kernel
    /// saying it no longer uses a buffer or descriptor), and only then free anything.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        self.stopping = true;
        // One entry cancels every request (IORING_ASYNC_CANCEL_ANY, Linux 5.19).
        let entry = opcode::AsyncCancel2::new(CancelBuilder::any()).build();
        self.submit(Op::Cancel { all: true }, entry);
        while self.in_flight > 0 {
            ENTERS.add(1);
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if support::interrupted(&e) || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e).context("io_uring_enter"),
            }
            let completions: Vec<cqueue::Entry> = self.ring.completion().collect();
            for cqe in completions {
                self.complete(cqe);
            }
        }
        Ok(())
    }

    /// The cancel-all completed. An older kernel rejects "any" with EINVAL: cancel each
    /// operation by its `user_data` instead.
    fn handle_cancel(&mut self, all: bool, result: i32) {
        if all && result == -libc::EINVAL {
            let keys: Vec<usize> = (0..self.ops.len())
                .filter(|&k| self.ops[k].is_some())
                .collect();
            for key in keys {
                let entry = opcode::AsyncCancel::new(key as u64).build();
                self.submit(Op::Cancel { all: false }, entry);
            }
        }
    }
    // ANCHOR_END: shutdown
}

/// A single accept, for kernels without multishot (and for the out-of-descriptors remedy). The
/// peer's address is not asked for: multishot cannot report it, so neither path does.
fn accept_once(listener: Fd) -> squeue::Entry {
    let (addr, len) = (std::ptr::null_mut(), std::ptr::null_mut());
    opcode::Accept::new(listener, addr, len)
        .flags(libc::SOCK_CLOEXEC)
        .build()
}
