//! # epoll: I/O multiplexing with `epoll(7)`
//!
//! One thread serves every client. Each socket is handed to the kernel once, when it arrives
//! (`epoll_ctl`), and stays in the kernel's interest list until it closes; each pass of the loop
//! sleeps in `epoll_wait` and gets back only the sockets that are ready, then makes only the
//! calls that will not block. This file is the level-triggered server; `--edge` runs the
//! edge-triggered one, `edge.rs`, the same skeleton with EPOLLET.
//!
//! Run it beside the client:
//!
//! ```text
//! cargo run -p epoll                       # terminal 1 (level-triggered, this file)
//! cargo run -p epoll -- --edge             # or: edge-triggered (edge.rs)
//! cargo run -p epoll -- --edge --read-once # or: edge-triggered with the classic bug
//! cargo run -p client                      # terminal 2, 3, 4 ...
//! ```
//!
//! Watch: `-v` prints every wake-up (`epoll_wait: 2 ready of 5 watched`) and each ready
//! client's flags (`EpollFlags(EPOLLIN)`); `top` shows ~0% CPU while the clients are idle, and a
//! wait costs the same with 10,000 idle clients as with one. (`--read-once`: see `edge.rs`.)
//!
//! Diff it: `diff poll/src/main.rs epoll/src/main.rs` (an array each pass → a set kept in the
//! kernel: register once, get only the ready ones back), then `diff epoll/src/main.rs
//! epoll/src/edge.rs` (level-triggered → edge-triggered).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use support::{Counter, STATS, count, say, trace};

mod edge; // the edge-triggered server, with --edge
mod pwait; // epoll_wait with a signal mask, which nix 0.32 does not wrap
use pwait::epoll_pwait;

/// Bytes read per `read` call.
const BUF_SIZE: usize = 4096;
/// Back-pressure: stop reading from a client while this much of its output is unsent.
const MAX_PENDING: usize = 64 * 1024;
/// Events fetched per wait; more stay on the kernel's ready list for the next wait.
const MAX_EVENTS: usize = 1024;
/// The listener's key in event data. Clients' keys count up from 0 and never reach it.
const LISTENER: u64 = u64::MAX;

/// Events epoll_wait handed back, and epoll_ctl calls by kind: the work poll did every pass.
static EVENTS: Counter = Counter::new();
static ADDS: Counter = Counter::new();
static MODIFIES: Counter = Counter::new();
static DELETES: Counter = Counter::new();

/// An echo server that waits in epoll(7): register each socket once, get only the ready ones back.
/// Level-triggered by default; --edge is edge-triggered: fewer reports, harder to get right.
#[derive(Parser)]
#[command(verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: support::Common,

    /// Register every socket edge-triggered (EPOLLET, edge.rs): each change is reported once,
    /// so every accept, read and write loop runs until WouldBlock.
    #[arg(long)]
    edge: bool,

    #[command(flatten)]
    edge_options: edge::Options,
}

// ANCHOR: client
/// One connected client: its socket and the bytes we owe it.
struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    /// Upper-cased bytes not yet written (a slow reader's backlog, at most ~MAX_PENDING).
    out: Vec<u8>,
    /// The client sent EOF: we read no more, and close once `out` is empty.
    eof: bool,
    /// A read or write failed (reset, broken pipe): close now.
    broken: bool,
    /// The events it is registered for, as the kernel has them (changed only by `modify`).
    interest: EpollFlags,
}

impl Client {
    fn new(stream: TcpStream, peer: SocketAddr) -> Client {
        Client {
            stream,
            peer,
            out: Vec::new(),
            eof: false,
            broken: false,
            interest: EpollFlags::empty(),
        }
    }
    /// Read interest: not after EOF, and not while its output is backed up (back-pressure).
    fn wants_read(&self) -> bool {
        !self.eof && !self.broken && self.out.len() < MAX_PENDING
    }
    /// Write interest: only while there is something to write.
    fn wants_write(&self) -> bool {
        !self.broken && !self.out.is_empty()
    }
    fn finished(&self) -> bool {
        self.broken || (self.eof && self.out.is_empty())
    }
    fn fail(&mut self, err: io::Error) {
        trace!("{}: {err}; closing", self.peer);
        self.broken = true;
    }
    /// What to register: exactly what it wants now. Level-triggered, a socket registered for
    /// an event we mean to ignore would wake us again and again.
    fn wanted(&self) -> EpollFlags {
        let mut events = EpollFlags::empty();
        events.set(EpollFlags::EPOLLIN, self.wants_read());
        events.set(EpollFlags::EPOLLOUT, self.wants_write());
        events
    }
}
// ANCHOR_END: client

fn main() -> ExitCode {
    let args = Args::parse();
    support::init(&args.common);
    support::finish(if args.edge {
        edge::run(&args)
    } else {
        run(&args)
    })
}

fn run(args: &Args) -> anyhow::Result<()> {
    // ANCHOR: setup
    // Set-up: socket, bind and listen (support::listen, with a long accept queue), then
    // non-blocking mode, so that accept with nothing waiting returns WouldBlock at once.
    let listener = support::listen(args.common.addr)?;
    listener.set_nonblocking(true).context("set_nonblocking")?;
    let wait_mask = support::catch_signals()?;
    // The interest list lives in the kernel: the listener goes in once, under its own key.
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
    let listen_for = EpollFlags::EPOLLIN;
    epoll
        .add(&listener, EpollEvent::new(listen_for, LISTENER))
        .context("epoll_ctl(ADD, listener)")?;
    ADDS.add(1);
    support::announce(&listener)?;
    let mut spare = support::reserve_descriptor();
    let mut clients: HashMap<u64, Client> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); MAX_EVENTS];
    let mut buf = [0u8; BUF_SIZE];
    // ANCHOR_END: setup

    while !support::stop_requested() {
        // ANCHOR: wait
        // Phase 1: wait. Nothing is rebuilt: every socket was registered when it arrived, and
        // epoll_wait fills `events` with the ready ones only, each tagged with the key we gave it.
        // (epoll_pwait is epoll_wait plus a signal mask: Ctrl-C can interrupt the wait and only it.)
        let n = match epoll_pwait(&epoll, &mut events, &wait_mask) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue, // a signal arrived; the loop condition decides
            Err(e) => return Err(e).context("epoll_wait"),
        };
        trace!("epoll_wait: {n} ready of {} watched", clients.len() + 1);
        // A wait that finds a socket ready at once returns without letting a Ctrl-C in: it
        // stays pending, blocked. Under steady load that is every wait, so ask after each one.
        if support::stop_pending() {
            break;
        }
        STATS.wakeups.add(1);
        EVENTS.add(n as u64);
        // EPOLLHUP and EPOLLERR come back whether asked for or not: count them as readable and
        // writable, so that the read or the write reports the EOF or the error; ignored, they
        // would make every level-triggered wait return at once, for ever.
        let gone = EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
        let readable = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | gone;
        let writable = EpollFlags::EPOLLOUT | gone;
        let ready = &events[..n];
        let listener_ready = ready.iter().any(|event| event.data() == LISTENER);
        // ANCHOR_END: wait

        // Phase 2: accept every connection waiting in the listen queue.
        if listener_ready {
            handle_new_connection(&listener, &epoll, &mut clients, &mut spare);
        }

        // ANCHOR: read_write
        // Phase 3: read and write, only where the kernel said the call will not block.
        for event in ready {
            let Some(client) = clients.get_mut(&event.data()) else {
                continue; // the listener: done in phase 2
            };
            trace!("{}: {:?}", client.peer, event.events());
            // Write first, then read: a flush that brings a back-pressured client's output
            // below MAX_PENDING lets it read again at once.
            if event.events().intersects(writable) {
                flush(client);
            }
            // Once is enough: input left unread is reported again by the next wait.
            if event.events().intersects(readable) && client.wants_read() {
                handle_client_data(client, &mut buf);
            }
        }
        // ANCHOR_END: read_write

        // ANCHOR: close
        // Phase 4: close, or update the registration. Only the clients named in this pass can
        // have changed, so only they are visited; poll and select walk every client, every pass.
        for event in ready {
            let key = event.data();
            let Some(client) = clients.get_mut(&key) else {
                continue;
            };
            // One epoll_ctl when reading or writing is switched on or off, none on the passes
            // in between.
            let wanted = client.wanted();
            if !client.finished() && wanted != client.interest {
                MODIFIES.add(1);
                match epoll.modify(&client.stream, &mut EpollEvent::new(wanted, key)) {
                    Ok(()) => {
                        trace!("{}: now registered for {wanted:?}", client.peer);
                        client.interest = wanted;
                    }
                    Err(e) => client.fail(e.into()),
                }
            }
            if client.finished() {
                trace!(
                    "{}: closed ({} bytes unsent)",
                    client.peer,
                    client.out.len()
                );
                // Delete before closing. close() takes a socket out of epoll only when it was
                // the last descriptor for it (a dup or a forked child keeps it registered).
                DELETES.add(1);
                if let Err(e) = epoll.delete(&client.stream) {
                    trace!("{}: epoll_ctl(DEL): {e}", client.peer);
                }
                clients.remove(&key); // dropping the stream closes the descriptor
            }
        }
        // ANCHOR_END: close
    }
    let events = EVENTS.get();
    support::summary(&[
        count(events, "level-triggered event", "level-triggered events"),
        format!("{} epoll_ctl add", ADDS.get()),
        format!("{} modify", MODIFIES.get()),
        format!("{} delete", DELETES.get()),
    ]);
    Ok(())
}

// ANCHOR: handle_new_connection
/// Accepts every waiting connection, until accept answers WouldBlock, and registers each one.
fn handle_new_connection(
    listener: &TcpListener,
    epoll: &Epoll,
    clients: &mut HashMap<u64, Client>,
    spare: &mut Option<File>,
) {
    loop {
        STATS.calls.add(1);
        match listener.accept() {
            Ok((stream, peer)) => {
                // On Linux the accepted socket does not inherit O_NONBLOCK from the listener.
                if let Err(e) = stream.set_nonblocking(true) {
                    trace!("{peer}: set_nonblocking: {e}");
                    continue;
                }
                // Register once, under a key that is never reused: the connection's serial
                // number. Descriptor numbers are reused at once, so an event that named one
                // could be taken for an earlier connection that had the same number.
                let key = STATS.connections.get(); // 0, 1, 2, ...
                let mut client = Client::new(stream, peer);
                client.interest = client.wanted();
                ADDS.add(1);
                if let Err(e) = epoll.add(&client.stream, EpollEvent::new(client.interest, key)) {
                    trace!("{peer}: epoll_ctl(ADD): {e}");
                    continue;
                }
                STATS.connections.add(1);
                let n = count(clients.len() as u64 + 1, "client", "clients");
                trace!("{peer}: connected ({n}, key {key})");
                clients.insert(key, client);
            }
            // The queue is empty: every waiting connection has been accepted.
            Err(e) if support::would_block(&e) => {
                STATS.would_block.add(1);
                break;
            }
            Err(e) if support::interrupted(&e) => {}
            // No descriptor left. The connection stays queued and the listener stays ready,
            // so the next wait returns at once, for ever: a busy loop. Give back the spare
            // descriptor, accept the connection and close it, then take the spare again.
            Err(e) if support::out_of_descriptors(&e) => {
                drop(spare.take());
                if let Ok((_stream, peer)) = listener.accept() {
                    say!("accept: {e}; closing {peer} unserved");
                }
                *spare = support::reserve_descriptor();
                break;
            }
            // E.g. ECONNABORTED: the client gave up before we accepted it.
            Err(e) => {
                trace!("accept: {e}");
                break;
            }
        }
    }
}
// ANCHOR_END: handle_new_connection

// ANCHOR: handle_client_data
/// Reads once from a ready client, queues the upper-cased bytes, and writes what it can.
fn handle_client_data(client: &mut Client, buf: &mut [u8]) {
    STATS.calls.add(1);
    match client.stream.read(buf) {
        // EOF: the client will send no more. Flush what we owe, then close.
        Ok(0) => client.eof = true,
        Ok(n) => {
            STATS.bytes_in.add(n as u64);
            support::transform(&mut buf[..n]);
            client.out.extend_from_slice(&buf[..n]);
            flush(client);
        }
        // Not ready after all (it happens); the next pass will ask again.
        Err(e) if support::would_block(&e) => STATS.would_block.add(1),
        Err(e) if support::interrupted(&e) => {}
        Err(e) => client.fail(e),
    }
}
// ANCHOR_END: handle_client_data

// ANCHOR: flush
/// Writes as much queued output as the socket takes now; what it does not take stays queued,
/// and the client keeps asking for EPOLLOUT until it is gone. Never waits.
fn flush(client: &mut Client) {
    while client.wants_write() {
        STATS.calls.add(1);
        match client.stream.write(&client.out) {
            Ok(n) => {
                STATS.bytes_out.add(n as u64);
                client.out.drain(..n);
            }
            // The socket's send buffer is full: the client is not reading fast enough.
            Err(e) if support::would_block(&e) => {
                STATS.would_block.add(1);
                break;
            }
            Err(e) if support::interrupted(&e) => {}
            Err(e) => client.fail(e),
        }
    }
}
// ANCHOR_END: flush
