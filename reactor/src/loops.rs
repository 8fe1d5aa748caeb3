//! One loop per thread (`--loops N`): N event loops, each with its own epoll instance and its own
//! listening socket, all bound to one port with SO_REUSEPORT, so that the kernel spreads the new
//! connections across them and no two loops ever share a connection, a buffer or a lock.

use std::cell::Cell;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::Context;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};

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

/// What one loop is given: its listener, its eventfd (the wake-up that workers and the other
/// loops use), and its part in the start.
pub struct Loop {
    pub listener: TcpListener,
    pub waker: Arc<EventFd>,
    pub set_up: SetUp,
}

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

// ANCHOR: spawn
/// Runs `serve` on one thread per listener and waits for them all; returns the connections
/// each loop accepted. A loop that stops (Ctrl-C, or an error) wakes every other through its
/// eventfd: a signal reaches only one thread, and the others may be asleep in epoll_wait.
pub fn spawn<F>(listeners: Vec<TcpListener>, serve: F) -> anyhow::Result<Vec<u64>>
where
    F: Fn(Loop) -> anyhow::Result<u64> + Send + Sync + 'static,
{
    let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
    let wakers: Vec<Arc<EventFd>> = (0..listeners.len())
        .map(|_| EventFd::from_flags(flags).map(Arc::new))
        .collect::<Result<_, _>>()
        .context("eventfd")?;
    let (serve, wakers) = (Arc::new(serve), WAKERS.get_or_init(|| wakers));
    let barrier = Arc::new(Barrier::new(listeners.len()));
    let (done, finished) = crossbeam_channel::bounded(listeners.len());
    for (id, listener) in listeners.into_iter().enumerate() {
        let (serve, done) = (Arc::clone(&serve), done.clone());
        let waker = Arc::clone(&wakers[id]);
        let set_up = SetUp {
            id,
            barrier: Arc::clone(&barrier),
        };
        std::thread::Builder::new()
            .name(format!("loop-{id}"))
            .spawn(move || {
                LOOP_ID.set(id);
                let result = serve(Loop {
                    listener,
                    waker,
                    set_up,
                });
                wake_all();
                let _ = done.send((id, result));
            })
            .context("spawn a loop's thread")?;
    }
    let mut connections = vec![0; wakers.len()];
    for (id, result) in finished.iter().take(wakers.len()) {
        connections[id] = result?; // an error ends the program, every loop with it
    }
    Ok(connections)
}
// ANCHOR_END: spawn

thread_local! {
    static LOOP_ID: Cell<usize> = const { Cell::new(0) };
    static ACCEPTED: Cell<u64> = const { Cell::new(0) };
}

/// The number of the loop running on this thread, for `-v`.
pub fn id() -> usize {
    LOOP_ID.get()
}

/// Counts a connection accepted by this thread's loop.
pub fn accepted() {
    ACCEPTED.set(ACCEPTED.get() + 1);
}

/// The connections this thread's loop has accepted.
pub fn connections() -> u64 {
    ACCEPTED.get()
}

/// The longest pass of any loop, in µs: from an epoll_wait's return to the next call. A socket
/// that became ready just after a wait returned waited at least that long to be looked at.
static LONGEST_PASS_US: AtomicU64 = AtomicU64::new(0);

/// Records one pass of a loop that began (its wait returned) at `woke`.
pub fn pass_ended(woke: Instant) {
    let us = woke.elapsed().as_micros() as u64;
    LONGEST_PASS_US.fetch_max(us, Ordering::Relaxed);
}

pub fn longest_pass_us() -> u64 {
    LONGEST_PASS_US.load(Ordering::Relaxed)
}

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

/// After an EMFILE that the spare could not answer: stop watching the listener.
pub fn starving(epoll: &Epoll, listener: &TcpListener, key: u64) {
    let _ = epoll.modify(listener, &mut EpollEvent::new(EpollFlags::empty(), key));
    LISTENER_OFF.set(true);
    STARVING.store(true, Ordering::SeqCst);
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
