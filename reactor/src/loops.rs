//! The loops (`--loops N`), and what they share. `start` sets up everything before the first loop
//! runs: the signal mask, the listening sockets, the workers, an eventfd per loop. Then N threads
//! each run one event loop (main.rs's `run`) with its own epoll instance and its own listening
//! socket, all bound to one port with SO_REUSEPORT, so that the kernel spreads the new connections
//! across them and no two loops ever share a connection, a buffer or a lock. Here too: the
//! chapter's options, the summary, and what several loops need that one did not (the start, the
//! stop, running out of descriptors together).

use std::cell::Cell;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::SigSet;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};
use support::{count, say};

use crate::pool::{LINES_IN_LOOP, LINES_IN_WORKERS, Pool};

/// An echo server on epoll(7) whose handler costs time: one thread stalls, a pool or more loops do not.
/// --work-us makes every line cost CPU; --workers moves it off the loop; --loops runs a loop per core.
#[derive(clap::Parser)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub common: support::Common,

    /// CPU time every line costs its handler, in µs (spinning, as a computation would). With
    /// more than 0, bytes without a newline wait for it, or for the end of the input.
    #[arg(long, default_value_t = 0, value_name = "N")]
    work_us: u64,

    /// Run the handlers on a pool of N threads instead of in the loop (0: in the loop).
    #[arg(long, default_value_t = 0, value_name = "N")]
    #[arg(value_parser = clap::value_parser!(u16).range(0..=1024))]
    workers: u16,

    /// Run N event loops, each on its own thread with its own epoll and its own listening socket
    /// on the same port (SO_REUSEPORT); the kernel spreads connections across them.
    #[arg(long, default_value_t = 1, value_name = "N")]
    #[arg(value_parser = clap::value_parser!(u16).range(1..=256))]
    loops: u16,
}

/// The command line, parsed.
pub fn args() -> Args {
    clap::Parser::parse()
}

/// What one loop is given: its listener (bound, listening), the signal mask its waits install,
/// its way to the pool, its eventfd (which workers and the other loops write to wake it), and
/// its part in the start.
pub struct Loop {
    pub listener: TcpListener,
    pub wait_mask: SigSet,
    pub pool: Pool,
    pub waker: Arc<EventFd>,
    pub set_up: SetUp,
}

// ANCHOR: start
/// Sets up what the loops share, runs `run` on one thread per loop, and waits for them all.
pub fn start(args: &Args, run: fn(Loop) -> anyhow::Result<()>) -> anyhow::Result<()> {
    // Block SIGINT and SIGTERM before any thread starts: every thread inherits the mask, so the
    // signals get in only where a loop waits in epoll_pwait with the mask that lets them.
    let wait_mask = support::catch_signals()?;
    let listeners = listen_all(args.common.addr, args.loops.into())?;
    let n = listeners.len();
    // One pool of workers for every loop; none with --workers 0 (the loops run the handler).
    let workers = (args.workers > 0).then(|| threadpool::ThreadPool::new(args.workers.into()));
    let cost = Duration::from_micros(args.work_us);
    let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
    let wakers: Vec<Arc<EventFd>> = (0..n)
        .map(|_| EventFd::from_flags(flags).map(Arc::new))
        .collect::<Result<_, _>>()
        .context("eventfd")?;
    let wakers = WAKERS.get_or_init(|| wakers);
    *tally() = Tally {
        running: n,
        connections: vec![0; n],
    };
    let barrier = Arc::new(Barrier::new(n));
    let (done, finished) = crossbeam_channel::bounded(n);
    for (id, listener) in listeners.into_iter().enumerate() {
        let me = Loop {
            listener,
            wait_mask,
            pool: Pool::new(workers.as_ref(), cost, Arc::clone(&wakers[id])),
            waker: Arc::clone(&wakers[id]),
            set_up: SetUp {
                id,
                barrier: Arc::clone(&barrier),
            },
        };
        let done = done.clone();
        std::thread::Builder::new()
            .name(format!("loop-{id}"))
            .spawn(move || {
                LOOP_ID.set(id);
                let result = run(me);
                // A loop that stops (Ctrl-C, or an error) wakes every other: a signal reaches
                // only one thread, and the others may be asleep in epoll_wait.
                wake_all();
                let _ = done.send(result);
            })
            .context("spawn a loop's thread")?;
    }
    for result in finished.iter().take(n) {
        result?; // an error ends the program, every loop with it
    }
    Ok(())
}
// ANCHOR_END: start

// ANCHOR: listen
/// The listening sockets, one per loop. One loop listens as every chapter does. Several each
/// bind the same address with SO_REUSEPORT; with port 0 the first is bound, and the others are
/// bound to the port the kernel picked for it (port 0 again would pick a new one for each).
pub fn listen_all(addr: SocketAddr, loops: usize) -> anyhow::Result<Vec<TcpListener>> {
    if loops == 1 {
        return Ok(vec![support::listen(addr)?]);
    }
    let first = listen_reuseport(addr)?;
    let addr = first.local_addr().context("getsockname")?;
    let mut listeners = vec![first];
    for _ in 1..loops {
        listeners.push(listen_reuseport(addr)?);
    }
    Ok(listeners)
}

/// socket, SO_REUSEPORT, bind, listen. SO_REUSEPORT must be set before bind, on every socket
/// that shares the port (and all of them must belong to one user): the kernel then keeps one
/// accept queue per socket and puts each new connection in one of them, chosen by a hash of the
/// connection's addresses and ports.
fn listen_reuseport(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let socket =
        socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).context("socket")?;
    setsockopt(&socket, sockopt::ReuseAddr, &true).context("SO_REUSEADDR")?;
    setsockopt(&socket, sockopt::ReusePort, &true).context("SO_REUSEPORT")?;
    bind(socket.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(|e| support::bind_error(addr, e.into()))?;
    listen(&socket, Backlog::MAXCONN).context("listen")?;
    Ok(TcpListener::from(socket))
}
// ANCHOR_END: listen

/// The start of the loops: the first announces the address once every loop is set up.
pub struct SetUp {
    id: usize,
    barrier: Arc<Barrier>,
}

impl SetUp {
    /// Once every loop has registered its listener, the first says where they listen: a
    /// client (or a test counting the descriptors) that reads it finds every loop ready.
    pub fn announce(&self, listener: &TcpListener) -> anyhow::Result<()> {
        self.barrier.wait();
        if self.id == 0 {
            support::announce(listener)?;
        }
        Ok(())
    }
}

thread_local! {
    static LOOP_ID: Cell<usize> = const { Cell::new(0) };
    static ACCEPTED: Cell<u64> = const { Cell::new(0) };
}

/// Counts a connection accepted by this thread's loop, and returns the loop's number.
pub fn accepted() -> usize {
    ACCEPTED.set(ACCEPTED.get() + 1);
    LOOP_ID.get()
}

/// The longest pass of any loop, in µs.
static LONGEST_PASS_US: AtomicU64 = AtomicU64::new(0);

/// One pass of a loop, timed from its wait's return until it is dropped at the end of the pass.
/// A socket that became ready just after the wait returned waited at least that long.
pub struct Pass(Instant);

impl Pass {
    pub fn begin() -> Pass {
        Pass(Instant::now())
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let us = self.0.elapsed().as_micros() as u64;
        LONGEST_PASS_US.fetch_max(us, Ordering::Relaxed);
    }
}

/// How many loops still run, and the connections each accepted.
struct Tally {
    running: usize,
    connections: Vec<u64>,
}

static TALLY: Mutex<Tally> = Mutex::new(Tally {
    running: 0,
    connections: Vec::new(),
});

fn tally() -> std::sync::MutexGuard<'static, Tally> {
    TALLY.lock().unwrap_or_else(PoisonError::into_inner)
}

// ANCHOR: summary
/// Each loop calls this as it stops, with the chapter's counters (shared by every loop). The last
/// one to stop prints the summary, with what the pool and the loops did: by then every loop has
/// left its loop, and the counters are final.
pub fn summary(counters: &[String]) {
    let mut tally = tally();
    tally.connections[LOOP_ID.get()] = ACCEPTED.get();
    tally.running -= 1;
    if tally.running > 0 {
        return;
    }
    let longest_pass = LONGEST_PASS_US.load(Ordering::Relaxed);
    let mut rows = counters.to_vec();
    rows.extend([
        count(LINES_IN_LOOP.get(), "line", "lines") + " handled in the loop",
        format!("{} by workers", LINES_IN_WORKERS.get()),
        format!("{longest_pass} µs longest pass of a loop"),
    ]);
    support::summary(&rows);
    if tally.connections.len() > 1 {
        say!("connections per loop: {:?}", tally.connections);
    }
}
// ANCHOR_END: summary

/// Every loop's eventfd, for [`wake_all`].
static WAKERS: OnceLock<Vec<Arc<EventFd>>> = OnceLock::new();

fn wake_all() {
    for waker in WAKERS.get().into_iter().flatten() {
        let _ = waker.write(1);
    }
}

// ANCHOR: starving
// Out of descriptors, with several loops. The spare descriptor trick (give the spare back,
// accept, close, take the spare again) assumes that nobody else opens a descriptor in between;
// but the loops share one descriptor table, and another loop's accept can take the one just
// given back. A loop left without its spare cannot accept at all, and its listener, ready for
// ever, would make every wait return at once. So it stops watching the listener, and the next
// loop to close a connection (freeing a descriptor) wakes every loop to try again.

/// Some loop has stopped watching its listener for want of a descriptor.
static STARVING: AtomicBool = AtomicBool::new(false);

thread_local! {
    static LISTENER_OFF: Cell<bool> = const { Cell::new(false) };
}

/// After an EMFILE, once the spare has been given back and the connection closed: takes the
/// spare again, as support::reserve_descriptor does. If another loop got the descriptor first,
/// stops watching the listener (key `key`) until a descriptor is freed.
pub fn reserve_descriptor(epoll: &Epoll, listener: &TcpListener, key: u64) -> Option<File> {
    let spare = support::reserve_descriptor();
    if spare.is_none() {
        let _ = epoll.modify(listener, &mut EpollEvent::new(EpollFlags::empty(), key));
        LISTENER_OFF.set(true);
        STARVING.store(true, Ordering::SeqCst);
    }
    spare
}

/// After closing a connection: if a loop is starving, wake them all.
pub fn descriptor_freed() {
    if STARVING.swap(false, Ordering::SeqCst) {
        wake_all();
    }
}

/// After a wake-up: a starving loop takes its spare again and watches its listener again.
pub fn woken(epoll: &Epoll, listener: &TcpListener, key: u64, spare: &mut Option<File>) {
    if LISTENER_OFF.get() {
        *spare = spare.take().or_else(support::reserve_descriptor);
        let _ = epoll.modify(listener, &mut EpollEvent::new(EpollFlags::EPOLLIN, key));
        LISTENER_OFF.set(false);
    }
}
// ANCHOR_END: starving
