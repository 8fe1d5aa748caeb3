//! POSIX AIO: `aio_read` and `aio_write` hand an operation over and return at once, and
//! `aio_suspend` sleeps until one has completed. The interface is asynchronous; glibc's
//! implementation is not in the kernel at all. It keeps a pool of helper threads, each of which
//! takes a request and makes the ordinary blocking call on our blocking socket (`pread`, which a
//! socket refuses with ESPIPE, then `read`: strace shows both). So every client waiting to send
//! us something keeps one helper blocked in `read`: watch the thread count follow them.
//!
//! Design for that: one request outstanding per client (read, then write the reply, then read
//! again: never a write queued behind a read that may wait for ever), a client admitted only
//! while a helper is free for it (`--threads`; a newcomer waits a moment for one to leave, then
//! is refused), and glibc told to allow that many helpers.
//!
//! aio_suspend can wait neither for a listener nor, race-free, for a signal (it takes no mask).
//! So an accept thread and a signal thread turn both into AIO completions: they write a byte to
//! a pipe on which the loop always has an aio_read outstanding (both in `posix/wake.rs`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::aio::{Aio, AioRead, AioWrite};
use nix::sys::signal::SigevNotify;
use nix::sys::time::TimeSpec;
use support::{Counter, STATS, count, say, trace};

mod wake; // the accept thread and the signal thread, which wake aio_suspend through a pipe
use wake::{spawn_acceptor, spawn_signal_waiter};

/// Bytes read per `aio_read`.
const BUF_SIZE: usize = 4096;

/// With every helper taken, a new connection waits this long for a client to leave before it is
/// refused: a client that has just hung up holds its helper until the helper's read of the
/// end-of-file completes, and the newcomer (often the same user, reconnecting) may get here
/// first. At most `MAX_WAITING` wait; past that, the longest waiting is refused at once.
const GRACE: Duration = Duration::from_secs(1);
const MAX_WAITING: usize = 64;

static AIO_READS: Counter = Counter::new();
static AIO_WRITES: Counter = Counter::new();
/// Connections refused because every helper thread may be taken.
static REFUSED: Counter = Counter::new();

/// glibc's `struct aioinit` (`<aio.h>`, a GNU extension), which the libc crate does not bind.
#[repr(C)]
#[derive(Default)]
struct AioInit {
    /// Most helper threads (default 20).
    aio_threads: libc::c_int,
    /// Requests expected at once (default 64).
    aio_num: libc::c_int,
    aio_locks: libc::c_int,
    aio_usedba: libc::c_int,
    aio_debug: libc::c_int,
    aio_numusers: libc::c_int,
    /// Seconds an idle helper waits for work before it exits (default 1).
    aio_idle_time: libc::c_int,
    aio_reserved: libc::c_int,
}

unsafe extern "C" {
    fn aio_init(init: *const AioInit);
}

/// What the loop needs of nix's `AioRead` and `AioWrite` alike.
trait Request: Aio<Output = usize> + AsRef<libc::aiocb> {}
impl<T: Aio<Output = usize> + AsRef<libc::aiocb>> Request for T {}

/// A submitted request. Its control block is on the heap, where glibc's pointer to it stays
/// valid however the `Op` moves.
struct Op<'a>(Pin<Box<dyn Request + 'a>>);

// ANCHOR: client
struct Client {
    /// The request in flight; none means the client is finished. Declared first, so that it is
    /// dropped before the socket and buffer it points into.
    op: Option<Op<'static>>,
    reading: bool,
    stream: TcpStream,
    peer: SocketAddr,
    /// Read into, upper-cased in place, written back from: one buffer, one request at a time.
    /// The reply is `buf[..len]`, of which `sent` bytes have gone.
    buf: Vec<u8>,
    len: usize,
    sent: usize,
}
// ANCHOR_END: client

/// An accepted connection waiting for a helper to come free.
struct Waiting {
    stream: TcpStream,
    peer: SocketAddr,
    since: Instant,
}

impl Waiting {
    /// How long it may still wait before it is refused.
    fn time_left(&self) -> TimeSpec {
        TimeSpec::from_duration(GRACE.saturating_sub(self.since.elapsed()))
    }
}

pub fn run(args: &crate::Args) -> anyhow::Result<()> {
    // ANCHOR: setup
    // Set-up. Before the first AIO call, tell glibc how many helpers it may start: one per
    // admitted client, plus one for the wake-up pipe's read.
    let threads = args.threads as libc::c_int;
    let init = AioInit {
        aio_threads: threads + 1,
        aio_num: threads + 1,
        aio_idle_time: 1,
        ..AioInit::default()
    };
    // SAFETY: a plain struct, read once, before any other AIO call.
    unsafe { aio_init(&init) };
    let listener = support::listen(args.common.addr)?;
    // Blocks SIGINT/SIGTERM here, before any thread starts, so every thread inherits that.
    let wait_mask = support::catch_signals()?;
    support::announce(&listener)?;
    let (wake_rx, wake_tx) = nix::unistd::pipe().context("pipe")?;
    let wake_tx = File::from(wake_tx);
    let (to_loop, accepted) = sync_channel(64);
    let acceptor = spawn_acceptor(listener.try_clone()?, to_loop, wake_tx.try_clone()?)?;
    spawn_signal_waiter(wait_mask, wake_tx.try_clone()?)?;
    let mut wake_buf = [0u8; 64];
    let read_wake = AioRead::new(wake_rx.as_fd(), 0, &mut wake_buf, 0, SigevNotify::SigevNone);
    let mut wake = Op::submit(Box::pin(read_wake)).context("aio_read on the wake-up pipe")?;
    let mut clients: Vec<Client> = Vec::new();
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut peak_threads = thread_count();
    // An error inside the loop must still reach the shutdown below, which ends every request
    // in flight before anything is freed: it is kept here, and returned after.
    let mut failure: Option<anyhow::Error> = None;
    // ANCHOR_END: setup

    while !support::stop_requested() && failure.is_none() {
        // ANCHOR: wait
        // Phase 1: wait in aio_suspend until at least one request has completed: the
        // wake-up pipe's read, or any client's read or write; or, while a connection waits
        // for a helper, until its time is up (EAGAIN).
        let timeout = waiting.front().map(Waiting::time_left);
        match aio_suspend(&in_flight(&wake, &clients), timeout.as_ref()) {
            Ok(()) | Err(Errno::EAGAIN) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                failure = Some(anyhow::Error::new(e).context("aio_suspend"));
                continue;
            }
        }
        STATS.wakeups.add(1);
        peak_threads = peak_threads.max(thread_count());
        // ANCHOR_END: wait

        // Phase 2: read and write: collect each finished request, start the client's next.
        for client in &mut clients {
            handle_client_data(client);
        }

        // Phase 3: close: a client with no request in flight is finished.
        clients.retain(|client| {
            if client.op.is_none() {
                trace!(
                    "{}: closed ({})",
                    client.peer,
                    count(thread_count(), "thread", "threads")
                );
            }
            client.op.is_some()
        });

        // Phase 4: accept, last, so that a client who has just left makes room for a new one.
        // If the pipe's read completed, new connections wait in the channel (or we are asked
        // to stop, which the loop condition sees): read the pipe again.
        if let Some(result) = wake.reap()
            && let Err(e) = result.and_then(|_| wake.0.as_mut().submit())
        {
            failure = Some(anyhow::Error::new(e).context("aio_read on the wake-up pipe"));
        }
        handle_new_connection(&accepted, &mut waiting, &mut clients, args.threads as usize);
    }

    // ANCHOR: shutdown
    // Stop. No request may be freed while glibc runs it, so each is ended and collected first.
    // aio_cancel cannot end one a helper has started (glibc answers AIO_NOTCANCELED), and every
    // idle client's read has started; shutting the socket down ends it with EOF, or a blocked
    // write with EPIPE. Shutting the listener down ends the accept thread's accept (EINVAL),
    // and a byte ends the pipe's read.
    let _ = nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Read);
    for client in &clients {
        let _ = client.stream.shutdown(Shutdown::Both);
    }
    let _ = (&wake_tx).write(b"!");
    while wake.0.in_progress() || !clients.is_empty() {
        let _ = aio_suspend(&in_flight(&wake, &clients), None);
        let _ = wake.reap();
        clients.retain_mut(|client| client.op.as_mut().is_some_and(|op| op.reap().is_none()));
    }
    drop(accepted); // so that an acceptor blocked in send() gives up too
    let _ = acceptor.join();
    // ANCHOR_END: shutdown
    support::summary(&[
        format!("{} aio_read", AIO_READS.get()),
        format!("{} aio_write", AIO_WRITES.get()),
        format!(
            "at most {} at once",
            count(peak_threads, "thread", "threads")
        ),
        format!("{} refused with every helper taken", REFUSED.get()),
    ]);
    failure.map_or(Ok(()), Err)
}

/// The control blocks of every request in flight, for aio_suspend.
fn in_flight<'a>(wake: &'a Op, clients: &'a [Client]) -> Vec<&'a dyn AsRef<libc::aiocb>> {
    let ops = std::iter::once(wake).chain(clients.iter().filter_map(|c| c.op.as_ref()));
    let ops = ops.filter(|op| op.0.in_progress());
    ops.map(|op| &*op.0 as &dyn AsRef<libc::aiocb>).collect()
}

/// `aio_suspend(3)`, called directly. nix 0.32's wrapper passes glibc a pointer to its own
/// copy of the timeout, which is gone before the call: glibc then reads whatever the stack
/// holds there, the kernel refuses the garbage (EINVAL), and glibc aborts the process on an
/// assertion. Here the timeout is the caller's, borrowed until the call returns.
fn aio_suspend(list: &[&dyn AsRef<libc::aiocb>], timeout: Option<&TimeSpec>) -> nix::Result<()> {
    let list: Vec<*const libc::aiocb> = list.iter().map(|op| (*op).as_ref() as *const _).collect();
    let timeout = timeout.map_or(std::ptr::null(), |t| t.as_ref() as *const libc::timespec);
    // SAFETY: each pointer is a control block of a request in flight, pinned on the heap and
    // alive for the call; `timeout` is null or borrowed for the call.
    let result = unsafe { libc::aio_suspend(list.as_ptr(), list.len() as libc::c_int, timeout) };
    Errno::result(result).map(drop)
}

// ANCHOR: handle_new_connection
/// Admits the connections the accept thread has queued, while a helper thread is free for each.
fn handle_new_connection(
    accepted: &Receiver<(TcpStream, SocketAddr)>,
    waiting: &mut VecDeque<Waiting>,
    clients: &mut Vec<Client>,
    threads: usize,
) {
    let now = Instant::now();
    let new = accepted.try_iter().map(|(stream, peer)| Waiting {
        stream,
        peer,
        since: now,
    });
    waiting.extend(new);
    while let Some(next) = waiting.pop_front() {
        // An idle client keeps a helper blocked in read for as long as it stays. One more
        // client than helpers would wait, unserved, until some other client spoke: unless
        // one leaves within GRACE, refuse it.
        if clients.len() >= threads {
            if next.since.elapsed() < GRACE && waiting.len() < MAX_WAITING {
                waiting.push_front(next);
                break;
            }
            REFUSED.add(1);
            let peer = next.peer;
            say!("refusing {peer}: all {threads} AIO helper threads may be busy; raise --threads");
            continue;
        }
        let Waiting { stream, peer, .. } = next;
        STATS.connections.add(1);
        let mut client = Client::new(stream, peer);
        client.start(true);
        let n = count(clients.len() as u64 + 1, "client", "clients");
        let threads = count(thread_count(), "thread", "threads");
        trace!("{peer}: connected ({n}, {threads})");
        clients.push(client);
    }
}
// ANCHOR_END: handle_new_connection

// ANCHOR: handle_client_data
/// If the client's request has completed, acts on its result and starts the next one.
fn handle_client_data(client: &mut Client) {
    let Some(result) = client.op.as_mut().and_then(Op::reap) else {
        return; // still in flight
    };
    client.op = None;
    match (client.reading, result) {
        // EOF. The reply to everything before it has been sent: finished (no new request).
        (true, Ok(0)) => {}
        (true, Ok(n)) => {
            STATS.bytes_in.add(n as u64);
            support::transform(&mut client.buf[..n]);
            (client.len, client.sent) = (n, 0);
            client.start(false);
        }
        // Back-pressure for free: the next read starts only once the reply has fully gone.
        (false, Ok(n)) => {
            STATS.bytes_out.add(n as u64);
            client.sent += n;
            client.start(client.sent == client.len);
        }
        (_, Err(e)) => trace!("{}: {e}; closing", client.peer),
    }
}
// ANCHOR_END: handle_client_data

impl Client {
    fn new(stream: TcpStream, peer: SocketAddr) -> Client {
        Client {
            op: None,
            reading: true,
            stream,
            peer,
            buf: vec![0u8; BUF_SIZE],
            len: 0,
            sent: 0,
        }
    }

    /// Submits the client's next request: a read into `buf`, or a write of the rest of the
    /// reply. If glibc refuses it, the client is left with none, and so is closed.
    fn start(&mut self, read: bool) {
        // SAFETY: a request borrows the socket and the buffer, which live beside it in this
        // Client: a borrow Rust's lifetimes cannot express, so it is made by hand, as 'static.
        // It holds because `op` is dropped before `stream` and `buf`, and only once glibc has
        // finished with it (`Op`'s Drop makes sure); and no code touches `buf` while it exists.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        let buf = unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr(), BUF_SIZE) };
        let sigev = SigevNotify::SigevNone;
        let request: Pin<Box<dyn Request>> = if read {
            AIO_READS.add(1);
            Box::pin(AioRead::new(fd, 0, buf, 0, sigev))
        } else {
            AIO_WRITES.add(1);
            Box::pin(AioWrite::new(fd, 0, &buf[self.sent..self.len], 0, sigev))
        };
        self.reading = read;
        match Op::submit(request) {
            Ok(op) => self.op = Some(op),
            Err(e) => trace!("{}: aio submit: {e}; closing", self.peer),
        }
    }
}

impl<'a> Op<'a> {
    fn submit(mut request: Pin<Box<dyn Request + 'a>>) -> nix::Result<Op<'a>> {
        request.as_mut().submit()?;
        Ok(Op(request))
    }

    /// The result of a finished request, collected with aio_return; None while it runs. A
    /// failure is aio_error's answer: aio_return gives only -1, and sets no errno.
    fn reap(&mut self) -> Option<nix::Result<usize>> {
        if !self.0.in_progress() {
            return None;
        }
        let error = match self.0.as_mut().error() {
            Err(Errno::EINPROGRESS) => return None,
            error => error,
        };
        let returned = self.0.as_mut().aio_return();
        Some(error.and(returned))
    }
}

impl Drop for Op<'_> {
    /// Freeing a request that glibc still runs, and so the socket and buffer it uses, would let
    /// glibc write into freed memory; nix only asserts, and not while a panic unwinds. Only a
    /// bug or a panic can get here: end the process instead.
    fn drop(&mut self) {
        if self.0.in_progress() {
            std::process::abort();
        }
    }
}

/// Threads in this process, from /proc/self/status. The file is opened once, at set-up, and
/// read again from its start: opening it in the loop could take the descriptor that the accept
/// thread has just freed for its out-of-descriptors remedy.
fn thread_count() -> u64 {
    static STATUS: OnceLock<Option<File>> = OnceLock::new();
    let mut buf = [0u8; 4096];
    let status = STATUS.get_or_init(|| File::open("/proc/self/status").ok());
    let n = status
        .as_ref()
        .and_then(|f| f.read_at(&mut buf, 0).ok())
        .unwrap_or(0);
    let line = buf[..n]
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"Threads:"));
    line.and_then(|n| std::str::from_utf8(n).ok()?.trim().parse().ok())
        .unwrap_or(0)
}
