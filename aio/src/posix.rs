//! POSIX AIO: `aio_read` and `aio_write` hand an operation over and return at once, and
//! `aio_suspend` sleeps until one has completed. The interface is asynchronous; glibc's
//! implementation is not in the kernel at all. It keeps a pool of helper threads (20 at most
//! unless told otherwise), each of which takes a request and makes the ordinary blocking call
//! on our blocking socket (`pread`, which a socket refuses with ESPIPE, then `read`: strace
//! shows both), running the requests for one descriptor in order. So every client waiting to
//! send us something keeps one helper blocked in `read`: watch the thread count follow them.
//!
//! Design for that: one operation outstanding per client (read, then write the reply, then
//! read again: never a write queued behind a read that may wait for ever), a client admitted
//! only while a helper is free for it (`--threads`), and glibc told to allow that many helpers.
//!
//! Ctrl-C: aio_suspend takes no signal mask, so it cannot wait race-free for a signal the way
//! pselect does, and a timeout (wake every second, check the flag) would trade the race for a
//! delay. Instead a thread waits for the signal and turns it into an AIO completion: it writes
//! a byte to a pipe on which the loop always has an aio_read outstanding. The accept thread
//! wakes the loop the same way, since aio_suspend cannot wait for a listener either.

use std::fs::File;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::aio::{Aio, AioCancelStat, AioRead, AioWrite, aio_suspend};
use nix::sys::signal::{SigSet, SigevNotify};
use support::{Counter, STATS, trace};

/// Bytes read per `aio_read`.
const BUF_SIZE: usize = 4096;

static AIO_READS: Counter = Counter::new();
static AIO_WRITES: Counter = Counter::new();
/// Connections refused because every helper thread may be taken.
static REFUSED: Counter = Counter::new();

/// glibc's `struct aioinit` (`<aio.h>`, a GNU extension). The libc crate does not bind it or
/// `aio_init`, so they are declared here, field for field.
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

/// A client's one operation in flight. `'static` is a promise kept by hand: see `Client::start`.
enum Op {
    Read(Pin<Box<AioRead<'static>>>),
    Write(Pin<Box<AioWrite<'static>>>),
}

// ANCHOR: client
struct Client {
    /// The operation in flight, if any; none means the client is finished. Declared first so
    /// that it is dropped before the socket and buffer it points into.
    op: Option<Op>,
    stream: TcpStream,
    peer: SocketAddr,
    /// Read into, upper-cased in place, written back from: one buffer, one operation at a time.
    buf: Box<[u8]>,
    /// The reply is `buf[..len]`, of which `sent` bytes have gone.
    len: usize,
    sent: usize,
}
// ANCHOR_END: client

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

    // aio_suspend can wait only for AIO requests: no listener, no signal. So both become one:
    // an aio_read on a pipe, which the accept thread and the signal thread write a byte to.
    let (wake_rx, wake_tx) = nix::unistd::pipe().context("pipe")?;
    let wake_tx = File::from(wake_tx);
    let (to_loop, accepted) = sync_channel(64);
    let acceptor = spawn_acceptor(listener.try_clone()?, to_loop, wake_tx.try_clone()?)?;
    spawn_signal_waiter(wait_mask, wake_tx.try_clone()?)?;
    let mut wake_buf = [0u8; 64];
    let mut wake = Box::pin(AioRead::new(
        wake_rx.as_fd(),
        0,
        &mut wake_buf,
        0,
        SigevNotify::SigevNone,
    ));
    wake.as_mut()
        .submit()
        .context("aio_read on the wake-up pipe")?;
    let mut clients: Vec<Client> = Vec::new();
    let mut peak_threads = thread_count();
    // An error inside the loop must still reach the shutdown below, which ends every
    // operation in flight before anything is freed: it is kept here, and returned after.
    let mut failure: Option<anyhow::Error> = None;
    // ANCHOR_END: setup

    while !support::stop_requested() && failure.is_none() {
        // ANCHOR: wait
        // Phase 1: wait in aio_suspend until at least one operation has completed: the
        // wake-up pipe's read, or any client's read or write.
        let mut list: Vec<&dyn AsRef<libc::aiocb>> = vec![&*wake];
        list.extend(clients.iter().filter_map(|c| c.op.as_ref()).map(Op::aiocb));
        match aio_suspend(&list, None) {
            Ok(()) => {}
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => {
                failure = Some(anyhow::Error::new(e).context("aio_suspend"));
                continue;
            }
        }
        STATS.wakeups.add(1);
        peak_threads = peak_threads.max(thread_count());
        // ANCHOR_END: wait

        // Phase 2: accept. The pipe's read completed: new connections wait in the channel
        // (or we are asked to stop, which the loop condition sees). Read the pipe again.
        if let Some(result) = reap(&mut wake) {
            handle_new_connection(&accepted, &mut clients, args.threads as usize);
            if let Err(e) = result.and_then(|_| wake.as_mut().submit()) {
                failure = Some(anyhow::Error::new(e).context("aio_read on the wake-up pipe"));
            }
        }

        // Phase 3: read and write: collect each finished operation, start the client's next.
        for client in &mut clients {
            handle_client_data(client);
        }

        // Phase 4: close: a client with no operation in flight is finished.
        clients.retain(|client| {
            if client.op.is_none() {
                trace!("{}: closed ({} threads)", client.peer, thread_count());
            }
            client.op.is_some()
        });
    }

    // ANCHOR: shutdown
    // Stop. No AioCb may be freed while glibc still uses it (nix panics rather than allow it),
    // so every operation is ended and collected first. aio_cancel removes a request that is
    // still queued; one that a helper is already running (blocked in read(2) on an idle
    // client) it cannot stop: glibc answers AIO_NOTCANCELED. Shutting the socket down ends
    // that read with EOF, or a blocked write with EPIPE. A byte ends the pipe's read.
    let _ = nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Read);
    for client in &mut clients {
        if let Some(Ok(AioCancelStat::AioNotCanceled)) = client.op.as_mut().map(Op::cancel) {
            let _ = client.stream.shutdown(Shutdown::Both);
        }
    }
    let _ = (&wake_tx).write(b"!");
    loop {
        let mut list: Vec<&dyn AsRef<libc::aiocb>> = Vec::new();
        if wake.in_progress() {
            list.push(&*wake);
        }
        list.extend(clients.iter().filter_map(|c| c.op.as_ref()).map(Op::aiocb));
        if list.is_empty() {
            break;
        }
        let _ = aio_suspend(&list, None);
        let _ = reap(&mut wake);
        for client in &mut clients {
            let _ = client.op.as_mut().and_then(Op::reap);
            client.op = client.op.take().filter(|op| op.in_progress());
        }
    }
    drop(accepted); // so that an acceptor blocked in send() gives up too
    let _ = acceptor.join();
    // ANCHOR_END: shutdown
    support::summary(&[
        ("aio_read", AIO_READS.get()),
        ("aio_write", AIO_WRITES.get()),
        ("peak threads", peak_threads),
        ("refused with every helper taken", REFUSED.get()),
    ]);
    failure.map_or(Ok(()), Err)
}

// ANCHOR: handle_new_connection
/// Admits the connections the accept thread has queued, while a helper thread is free for each.
fn handle_new_connection(
    accepted: &Receiver<(TcpStream, SocketAddr)>,
    clients: &mut Vec<Client>,
    threads: usize,
) {
    while let Ok((stream, peer)) = accepted.try_recv() {
        // An idle client keeps a helper blocked in read for as long as it stays. One more
        // client than helpers would wait, unserved, until some other client spoke: refuse it.
        if clients.len() >= threads {
            REFUSED.add(1);
            eprintln!(
                "refusing {peer}: all {threads} AIO helper threads may be busy; raise --threads"
            );
            continue;
        }
        STATS.connections.add(1);
        let mut client = Client {
            op: None,
            stream,
            peer,
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            len: 0,
            sent: 0,
        };
        client.start(true);
        trace!(
            "{peer}: connected ({} clients, {} threads)",
            clients.len() + 1,
            thread_count()
        );
        clients.push(client);
    }
}
// ANCHOR_END: handle_new_connection

// ANCHOR: handle_client_data
/// If the client's operation has completed, acts on its result and starts the next one.
fn handle_client_data(client: &mut Client) {
    let Some(result) = client.op.as_mut().and_then(Op::reap) else {
        return; // still in flight
    };
    let was_read = matches!(client.op.take(), Some(Op::Read(_)));
    match (was_read, result) {
        // EOF. The reply to everything before it has been sent: finished (no new operation).
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
    /// Submits the client's next operation: a read into `buf`, or a write of the rest of the
    /// reply. If glibc refuses it, the client is left with none, and so is closed.
    fn start(&mut self, read: bool) {
        // SAFETY: AioRead and AioWrite borrow the socket and the buffer for as long as they
        // exist, and all three live in this Client, which Rust's lifetimes cannot express; so
        // the borrow is made by hand. It holds because `op` is dropped before `stream` and
        // `buf`, and only once glibc is done with it (collected, or cancelled and waited for):
        // nix asserts that, panicking rather than free an operation still in flight.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        let buf = unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr(), BUF_SIZE) };
        let submitted = if read {
            AIO_READS.add(1);
            let mut op = Box::pin(AioRead::new(fd, 0, buf, 0, SigevNotify::SigevNone));
            op.as_mut().submit().map(|()| Op::Read(op))
        } else {
            AIO_WRITES.add(1);
            let rest = &buf[self.sent..self.len];
            let mut op = Box::pin(AioWrite::new(fd, 0, rest, 0, SigevNotify::SigevNone));
            op.as_mut().submit().map(|()| Op::Write(op))
        };
        match submitted {
            Ok(op) => self.op = Some(op),
            Err(e) => trace!("{}: aio submit: {e}; closing", self.peer),
        }
    }
}

impl Op {
    fn aiocb(&self) -> &dyn AsRef<libc::aiocb> {
        match self {
            Op::Read(op) => &**op,
            Op::Write(op) => &**op,
        }
    }
    fn reap(&mut self) -> Option<nix::Result<usize>> {
        match self {
            Op::Read(op) => reap(op),
            Op::Write(op) => reap(op),
        }
    }
    fn cancel(&mut self) -> nix::Result<AioCancelStat> {
        match self {
            Op::Read(op) => op.as_mut().cancel(),
            Op::Write(op) => op.as_mut().cancel(),
        }
    }
    fn in_progress(&self) -> bool {
        match self {
            Op::Read(op) => op.in_progress(),
            Op::Write(op) => op.in_progress(),
        }
    }
}

/// The result of a finished operation, collected with aio_return; None while it runs.
fn reap<T: Aio<Output = usize>>(op: &mut Pin<Box<T>>) -> Option<nix::Result<usize>> {
    if !op.in_progress() {
        return None;
    }
    match op.as_mut().error() {
        Err(Errno::EINPROGRESS) => None,
        _ => Some(op.as_mut().aio_return()),
    }
}

/// Accepts connections in a thread of its own, since aio_suspend cannot wait for a listener,
/// and wakes the loop through the pipe. Ends when the listener is shut down (EINVAL).
fn spawn_acceptor(
    listener: TcpListener,
    to_loop: SyncSender<(TcpStream, SocketAddr)>,
    wake: File,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let run = move || {
        let mut spare = support::reserve_descriptor();
        loop {
            match listener.accept() {
                Ok(conn) => {
                    if to_loop.send(conn).is_err() {
                        return;
                    }
                    let _ = (&wake).write(b"a");
                }
                Err(e) if support::interrupted(&e) => {}
                // The listener was shut down: we are stopping.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                // Out of descriptors: the spare-descriptor remedy (see select's accept).
                Err(e) if support::out_of_descriptors(&e) => {
                    drop(spare.take());
                    if let Ok((_stream, peer)) = listener.accept() {
                        eprintln!("accept: {e}; closing {peer} unserved");
                    }
                    spare = support::reserve_descriptor();
                }
                Err(e) => trace!("accept: {e}"),
            }
        }
    };
    thread::Builder::new()
        .name("acceptor".into())
        .spawn(run)
        .context("spawn the accept thread")
}

/// Ctrl-C, race-free without a mask on aio_suspend: this thread sleeps in ppoll with SIGINT
/// and SIGTERM unblocked, the one place in the process where they are. The handler sets the
/// stop flag, ppoll returns EINTR, and a byte on the pipe completes the loop's aio_read.
fn spawn_signal_waiter(wait_mask: SigSet, wake: File) -> anyhow::Result<()> {
    let run = move || {
        let mut nothing: [nix::poll::PollFd; 0] = [];
        while !support::stop_requested() {
            let _ = nix::poll::ppoll(&mut nothing, None, Some(wait_mask));
        }
        let _ = (&wake).write(b"s");
    };
    thread::Builder::new()
        .name("signals".into())
        .spawn(run)
        .context("spawn the signal thread")?;
    Ok(())
}

/// Threads in this process, from /proc/self/status.
fn thread_count() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find_map(|l| l.strip_prefix("Threads:"));
    line.and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}
