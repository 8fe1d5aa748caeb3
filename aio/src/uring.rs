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
use io_uring::{IoUring, cqueue, opcode, squeue};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{SockaddrStorage, getpeername};
use support::{Counter, STATS, say, trace};

/// Bytes received per `Recv`. Each connection owns one buffer of this size for its whole life
/// (40 MiB at 10,000 clients); io_uring's provided-buffer rings are the remedy, not shown here.
const BUF_SIZE: usize = 4096;

/// Operations handed to the kernel, completions it returned, and the system calls that took.
static SUBMISSIONS: Counter = Counter::new();
static COMPLETIONS: Counter = Counter::new();
static ENTERS: Counter = Counter::new();

/// One client. `buf` is a Vec, not a Box: moving a Box claims its memory is reachable through
/// no other pointer, and the kernel holds one while an operation is in flight.
struct Conn {
    fd: OwnedFd,
    peer: String,
    buf: Vec<u8>,
}

/// One operation in flight, holding whatever its completion needs.
enum Op {
    /// Accept on the listener. Multishot: one submission, one completion per connection, until
    /// a completion without the MORE flag says it has stopped.
    Accept,
    /// Out of descriptors (the error): one accept into the spare descriptor's slot.
    Refuse(io::Error),
    Recv(Conn),
    /// Sending `buf[sent..len]`; a short send is resubmitted for the rest.
    Send {
        conn: Conn,
        len: usize,
        sent: usize,
    },
    Close(String),
    /// Waiting for SIGINT or SIGTERM: a poll on the signalfd.
    Signal,
    /// Cancelling, on stop: every operation at once, or (before 5.19) one.
    Cancel,
}

struct Server {
    ring: IoUring,
    listener: TcpListener,
    signals: SignalFd,
    /// Operations in flight, indexed by `user_data`; `free` lists the empty slots.
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    /// Completions taken off the ring and not yet handled (phase 2).
    completions: Vec<cqueue::Entry>,
    /// Multishot accept and cancel-any (both Linux 5.19)? Learnt from the first accept.
    multishot: bool,
    spare: Option<File>,
    clients: usize,
    stopping: bool,
}

pub fn run(args: &crate::Args) -> anyhow::Result<()> {
    // ANCHOR: setup
    // Set-up: the ring first, so that a kernel without io_uring fails before we announce
    // anything. The listener stays blocking: the process never calls accept itself.
    let ring = new_ring(args)?;
    let listener = support::listen(args.common.addr)?;
    let signals = stop_signal_fd()?;
    support::announce(&listener)?;
    let mut server = Server {
        ring,
        listener,
        signals,
        ops: Vec::new(),
        free: Vec::new(),
        completions: Vec::new(),
        multishot: !args.simulate_old_kernel,
        spare: support::reserve_descriptor(),
        clients: 0,
        stopping: false,
    };
    server.arm_accept();
    server.arm_signal();
    // ANCHOR_END: setup

    while !support::stop_requested() {
        // ANCHOR: wait
        // Phase 1: submit and wait. One io_uring_enter hands the kernel every operation queued
        // since the last one and sleeps until at least one has completed. Ctrl-C comes back
        // as a completion too (see `stop_signal_fd`), so the loop sees it however busy it is.
        ENTERS.add(1);
        let want = usize::from(server.completions.is_empty());
        match server.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if support::interrupted(&e) => continue, // wait again
            // The completion ring is full and the kernel holds more: drain it first.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e).context("io_uring_enter"),
        }
        STATS.wakeups.add(1);
        server.completions.extend(server.ring.completion());
        trace!(
            "io_uring_enter: {} completions, {} operations in flight",
            server.completions.len(),
            server.in_flight()
        );
        // ANCHOR_END: wait

        // Phase 2: accept, read and write all arrive here the same way, as completions, in
        // the order the kernel finished them; each may queue the connection's next operation.
        for cqe in std::mem::take(&mut server.completions) {
            server.complete(cqe);
        }
    }
    server.shutdown()?;
    let (ops, calls) = (SUBMISSIONS.get(), ENTERS.get());
    let completions = COMPLETIONS.get();
    support::summary(&[
        ("submissions", ops),
        ("completions", completions),
        ("io_uring_enter calls", calls),
    ]);
    let per_call = ops as f64 / calls.max(1) as f64;
    say!("{ops} operations in {calls} system calls: {per_call:.1} per io_uring_enter");
    Ok(())
}

/// Creates the ring, or explains in one line why this kernel will not give us one. The
/// completion ring is 8 times the submission ring: more than one entry per connection at
/// 10,000 clients. Should it fill, the kernel keeps the rest (IORING_FEAT_NODROP).
fn new_ring(args: &crate::Args) -> anyhow::Result<IoUring> {
    let ring = if args.simulate_no_uring {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    } else {
        let entries = args.ring_entries;
        IoUring::builder().setup_cqsize(8 * entries).build(entries)
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

/// SIGINT and SIGTERM as a descriptor. Both are blocked, so never delivered: they stay pending
/// and make the signalfd readable, and a poll on the ring turns that into a completion. (The
/// pselect way, a mask that unblocks them during the wait, is not enough here: the kernel
/// applies it only if io_uring_enter sleeps, and under load there is always a completion
/// ready, so Ctrl-C would wait for the load to stop.)
fn stop_signal_fd() -> anyhow::Result<SignalFd> {
    let set = support::stop_signals();
    set.thread_block().context("pthread_sigmask")?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("signalfd")
}

/// The descriptor a completed accept returned, now ours, or its error.
fn accepted(result: i32) -> io::Result<OwnedFd> {
    if result < 0 {
        return Err(io::Error::from_raw_os_error(-result));
    }
    // SAFETY: a successful accept returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(result) })
}

impl Server {
    // ANCHOR: submit
    /// Queues one operation. The entry points into buffers and descriptors that `op` owns, and
    /// `op` stays in `ops` until the operation's final completion: that is what keeps it safe.
    fn submit(&mut self, op: Op, entry: squeue::Entry) {
        let key = self.free.pop().unwrap_or_else(|| {
            self.ops.push(None);
            self.ops.len() - 1
        });
        self.ops[key] = Some(op);
        SUBMISSIONS.add(1);
        let entry = entry.user_data(key as u64);
        // SAFETY: see above; the memory the entry names outlives the operation.
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            // The submission ring is full: hand what it holds to the kernel to make room. If
            // the completion ring is full too (EBUSY), take its entries out for phase 2 first.
            ENTERS.add(1);
            match self.ring.submit() {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.completions.extend(self.ring.completion());
                }
                // EINTR, or EAGAIN (no memory for the requests just now): try again.
                Err(e) if support::interrupted(&e) || e.kind() == io::ErrorKind::WouldBlock => {}
                // Only a broken ring gets here. `Drop` keeps the buffers the kernel holds.
                Err(e) => panic!("io_uring_enter: {e}"),
                Ok(_) => {}
            }
        }
    }
    // ANCHOR_END: submit

    /// Removes the operation whose final completion has arrived.
    fn take(&mut self, key: usize) -> Option<Op> {
        let op = self.ops.get_mut(key)?.take()?;
        self.free.push(key);
        Some(op)
    }

    fn in_flight(&self) -> usize {
        self.ops.len() - self.free.len()
    }

    fn arm_accept(&mut self) {
        let fd = Fd(self.listener.as_raw_fd());
        let entry = match self.multishot {
            true => opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            false => accept_once(fd),
        };
        self.submit(Op::Accept, entry);
    }

    fn arm_signal(&mut self) {
        let fd = Fd(self.signals.as_raw_fd());
        let entry = opcode::PollAdd::new(fd, libc::POLLIN as u32).build();
        self.submit(Op::Signal, entry);
    }

    fn recv(&mut self, mut conn: Conn) {
        let entry = opcode::Recv::new(
            Fd(conn.fd.as_raw_fd()),
            conn.buf.as_mut_ptr(),
            BUF_SIZE as _,
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
            return self.handle_new_connection(accepted(result));
        }
        let Some(op) = self.take(key) else { return };
        match op {
            Op::Cancel => {}
            // Shutting down: each operation ends here, and dropping it closes its connection.
            Op::Accept | Op::Refuse(_) if self.stopping => drop(accepted(result)),
            _ if self.stopping => {}
            Op::Accept => {
                match accepted(result) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.multishot => {
                        trace!("no multishot accept on this kernel: one accept per connection");
                        self.multishot = false;
                    }
                    // The connection stays queued, and accepting again would fail again at
                    // once, for ever. Give back the spare descriptor and accept into its slot.
                    Err(e) if support::out_of_descriptors(&e) => {
                        drop(self.spare.take());
                        let entry = accept_once(Fd(self.listener.as_raw_fd()));
                        return self.submit(Op::Refuse(e), entry);
                    }
                    other => self.handle_new_connection(other),
                }
                self.arm_accept();
            }
            Op::Refuse(why) => {
                // accept fails before it looks for a connection, so this one may have waited
                // for the next. If a descriptor is free beside the spare, clients have left
                // since: serve it. If not, close it unserved and take the spare back.
                self.spare = support::reserve_descriptor();
                match accepted(result) {
                    Ok(fd) if self.spare.is_none() => {
                        drop(fd);
                        say!("accept: {why}; closing a connection unserved");
                        self.spare = support::reserve_descriptor();
                    }
                    other => self.handle_new_connection(other),
                }
                self.arm_accept();
            }
            Op::Recv(conn) => self.handle_client_data(conn, result),
            Op::Send { conn, len, sent } => self.flush(conn, len, sent, result),
            Op::Close(peer) => trace!("{peer}: closed ({} clients)", self.clients),
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
            Ok(_) if self.stopping => return, // dropping it closes it
            Ok(fd) => fd,
            Err(_) if self.stopping => return, // ECANCELED: we cancelled it
            // E.g. ECONNABORTED: the client gave up before it was accepted.
            Err(e) => return trace!("accept: {e}"),
        };
        STATS.connections.add(1);
        self.clients += 1;
        // Multishot accept reports no address; ask for one only when tracing.
        let peer = match support::verbosity() {
            0 => String::new(),
            _ => getpeername::<SockaddrStorage>(fd.as_raw_fd())
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
        };
        trace!("{peer}: connected ({} clients)", self.clients);
        let buf = vec![0u8; BUF_SIZE];
        self.recv(Conn { fd, peer, buf });
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
                let err = io::Error::from_raw_os_error(-err);
                trace!("{}: recv: {err}; closing", conn.peer);
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
            let err = io::Error::from_raw_os_error(-result);
            trace!("{}: send: {err}; closing", conn.peer);
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
        if self.multishot {
            // One entry cancels every operation: IORING_ASYNC_CANCEL_ANY, new in 5.19 like
            // multishot accept. Before that, one entry per operation, named by its key.
            let entry = opcode::AsyncCancel2::new(CancelBuilder::any()).build();
            self.submit(Op::Cancel, entry);
        } else {
            let keys: Vec<usize> = (0..self.ops.len())
                .filter(|&k| self.ops[k].is_some())
                .collect();
            for key in keys {
                self.submit(Op::Cancel, opcode::AsyncCancel::new(key as u64).build());
            }
        }
        while self.in_flight() > 0 {
            ENTERS.add(1);
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if support::interrupted(&e) || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e).context("io_uring_enter"),
            }
            self.completions.extend(self.ring.completion());
            for cqe in std::mem::take(&mut self.completions) {
                self.complete(cqe);
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
        if self.in_flight() > 0 {
            std::mem::forget(std::mem::take(&mut self.ops));
        }
    }
}

/// A single accept, for kernels without multishot (and for the out-of-descriptors remedy). The
/// peer's address is not asked for: multishot cannot report it, so neither path does.
fn accept_once(listener: Fd) -> squeue::Entry {
    let (addr, len) = (std::ptr::null_mut(), std::ptr::null_mut());
    opcode::Accept::new(listener, addr, len)
        .flags(libc::SOCK_CLOEXEC)
        .build()
}
