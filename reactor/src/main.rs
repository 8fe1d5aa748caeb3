//! # reactor: beyond one thread
//!
//! The epoll chapter's level-triggered loop, with a handler that costs time. One thread detects
//! events and handles them, so while it handles one client's lines, every other client waits:
//! the lecture's last warning about multiplexing, made visible. Then the two ways real servers
//! use more than one core: a worker pool behind the loop (`--workers`), and one loop per core,
//! each with its own listening socket on the same port (`--loops`, SO_REUSEPORT).
//!
//! Run it beside two clients:
//!
//! ```text
//! cargo run -p reactor -- --work-us 1000                    # terminal 1: 1 ms of CPU a line
//! (seq 1000; sleep 2) | cargo run -q -p client -- --follow   # terminal 2: 1000 lines at once
//! cargo run -p client                                       # terminal 3: type a line meanwhile
//! cargo run -p reactor -- --work-us 1000 --workers 4        # the stall is gone
//! cargo run -p reactor -- --loops 2 -v                      # two loops, one port
//! ```
//!
//! Watch: the summary on Ctrl-C says how many lines the loop handled itself and how many the
//! workers did, the longest pass of a loop (how long a ready socket could wait for it), and
//! with `--loops`, the connections each loop accepted.
//!
//! Diff it: `diff epoll/src/main.rs reactor/src/main.rs` (the handler gets a cost, a pool and
//! its wake-up, and the loop a thread per core); the pool is in `pool.rs`, the loops in `loops.rs`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::SigSet;
use pool::{LINES_IN_LOOP, LINES_IN_WORKERS, Pool};
use support::{Counter, STATS, say, trace};

mod loops; // one loop per thread, each with its own listener on one port (SO_REUSEPORT)
mod pool; // the handler, and the workers that can run it off the loop
#[path = "../../epoll/src/pwait.rs"]
mod pwait; // epoll_wait with a signal mask, which nix 0.32 does not wrap
use pwait::epoll_pwait;

/// Bytes read per `read` call.
const BUF_SIZE: usize = 4096;
/// Back-pressure: stop reading from a client while this much of its output is unsent, or of its
/// input unhandled (a line this long without its `\n` is handled as it is).
const MAX_PENDING: usize = 64 * 1024;
/// Events fetched per wait; more stay on the kernel's ready list for the next wait.
const MAX_EVENTS: usize = 1024;
/// The listener's key in event data. Clients' keys count up from 0 and never reach it.
const LISTENER: u64 = u64::MAX;
/// The key of the loop's eventfd: a worker finished a batch, or another loop stopped.
const WAKER: u64 = u64::MAX - 1;

/// Events epoll_wait handed back, and epoll_ctl calls by kind: the work poll did every pass.
static EVENTS: Counter = Counter::new();
static ADDS: Counter = Counter::new();
static MODIFIES: Counter = Counter::new();
static DELETES: Counter = Counter::new();

/// An echo server on epoll(7) whose handler costs time: one thread stalls, a pool or more loops do not.
/// --work-us makes every line cost CPU; --workers moves it off the loop; --loops runs a loop per core.
#[derive(Parser)]
#[command(verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: support::Common,

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

// ANCHOR: client
/// One connected client: its socket and the bytes we owe it.
struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    /// Upper-cased bytes not yet written (a slow reader's backlog, at most ~MAX_PENDING).
    out: Vec<u8>,
    /// Bytes read and not yet handled: a line still without its `\n`, and lines that wait for
    /// the batch at the pool to come back (at most ~MAX_PENDING).
    input: Vec<u8>,
    /// A batch of its lines is at the pool. The next batch waits for it: replies stay in order.
    busy: bool,
    /// Its next batch waits for room at the pool: read no more from it meanwhile.
    queued: bool,
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
            input: Vec::new(),
            busy: false,
            queued: false,
            eof: false,
            broken: false,
            interest: EpollFlags::empty(),
        }
    }
    /// Read interest: not after EOF, not while its output is backed up or its input unhandled
    /// (back-pressure), and not while the pool has no room for it.
    fn wants_read(&self) -> bool {
        !self.eof
            && !self.broken
            && self.out.len() < MAX_PENDING
            && self.input.len() < MAX_PENDING
            && !self.queued
    }
    /// Write interest: only while there is something to write.
    fn wants_write(&self) -> bool {
        !self.broken && !self.out.is_empty()
    }
    /// Done: broken, or at EOF with every line handled and every reply written.
    fn finished(&self) -> bool {
        self.broken || (self.eof && self.out.is_empty() && self.input.is_empty() && !self.busy)
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
    support::finish(run(&args))
}

// ANCHOR: run
/// Set-up for every loop, then the loops, then the summary once they have all stopped.
fn run(args: &Args) -> anyhow::Result<()> {
    // Block SIGINT and SIGTERM before any thread starts: every thread inherits the mask, so the
    // signals get in only where a loop waits in epoll_pwait with the mask that lets them.
    let wait_mask = support::catch_signals()?;
    let listeners = loops::listen_all(args.common.addr, args.loops.into())?;
    let workers = (args.workers > 0).then(|| threadpool::ThreadPool::new(args.workers.into()));
    let cost = Duration::from_micros(args.work_us);
    let connections = loops::spawn(listeners, move |me| {
        let pool = Pool::new(workers.as_ref(), cost, me.waker.clone());
        serve(me, pool, &wait_mask)
    })?;
    support::summary(&[
        ("level-triggered events", EVENTS.get()),
        ("epoll_ctl add", ADDS.get()),
        ("modify", MODIFIES.get()),
        ("delete", DELETES.get()),
        ("lines handled in the loop", LINES_IN_LOOP.get()),
        ("by workers", LINES_IN_WORKERS.get()),
        ("µs longest pass of a loop", loops::longest_pass_us()),
    ]);
    if connections.len() > 1 {
        say!("connections per loop: {connections:?}");
    }
    Ok(())
}
// ANCHOR_END: run

/// One event loop: the epoll chapter's, on its own listener, with its own eventfd in its set.
fn serve(me: loops::Loop, mut pool: Pool, wait_mask: &SigSet) -> anyhow::Result<u64> {
    // ANCHOR: setup
    // Set-up: the listener was bound by `run` (support::listen, or SO_REUSEPORT with --loops);
    // non-blocking mode, so that accept with nothing waiting returns WouldBlock at once.
    let listener = me.listener;
    listener.set_nonblocking(true).context("set_nonblocking")?;
    // The interest list lives in the kernel: the listener goes in once, under its own key, and
    // so does the eventfd that workers and the other loops write to wake this one.
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
    let listen_for = EpollFlags::EPOLLIN;
    epoll
        .add(&listener, EpollEvent::new(listen_for, LISTENER))
        .context("epoll_ctl(ADD, listener)")?;
    epoll
        .add(&*me.waker, EpollEvent::new(EpollFlags::EPOLLIN, WAKER))
        .context("epoll_ctl(ADD, eventfd)")?;
    ADDS.add(2);
    let mut spare = support::reserve_descriptor();
    me.set_up.announce(&listener)?; // once every loop holds all it needs
    let mut clients: HashMap<u64, Client> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); MAX_EVENTS];
    let mut buf = [0u8; BUF_SIZE];
    // ANCHOR_END: setup

    while !support::stop_requested() {
        // ANCHOR: wait
        // Phase 1: wait. Nothing is rebuilt: every socket was registered when it arrived, and
        // epoll_wait fills `events` with the ready ones only, each tagged with the key we gave it.
        // (epoll_pwait is epoll_wait plus a signal mask: Ctrl-C can interrupt the wait and only it.)
        let n = match epoll_pwait(&epoll, &mut events, wait_mask) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue, // a signal arrived; the loop condition decides
            Err(e) => return Err(e).context("epoll_wait"),
        };
        trace!("epoll_wait: {n} ready of {} watched", clients.len() + 2);
        // A wait that finds a socket ready at once returns without letting a Ctrl-C in: it
        // stays pending, blocked. Under steady load that is every wait, so ask after each one.
        if support::stop_pending() {
            break;
        }
        let woke = Instant::now();
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
        let woken = ready.iter().any(|event| event.data() == WAKER);
        // ANCHOR_END: wait

        // Phase 2: accept every connection waiting in the listen queue.
        if listener_ready {
            handle_new_connection(&listener, &epoll, &mut clients, &mut spare);
        }

        // ANCHOR: results
        // Phase 2½: the eventfd woke us: take in the batches the workers finished. Each reply
        // goes out after the ones before it, and its client's next batch can go to the pool.
        let mut touched: Vec<u64> = ready.iter().map(|event| event.data()).collect();
        if woken {
            loops::woken(&epoll, &listener, LISTENER, &mut spare);
            for done in pool.collect() {
                let Some(client) = clients.get_mut(&done.key) else {
                    continue; // it left while its lines were worked on
                };
                client.busy = false;
                client.out.extend_from_slice(&done.reply);
                flush(client);
                handle_lines(done.key, client, &mut pool);
                touched.push(done.key);
            }
        }
        // Batches came back, so there is room at the pool: the clients that waited for it next.
        while let Some(key) = pool.next_waiting() {
            if let Some(client) = clients.get_mut(&key) {
                client.queued = false;
                handle_lines(key, client, &mut pool);
                touched.push(key);
            }
        }
        // ANCHOR_END: results

        // ANCHOR: read_write
        // Phase 3: read and write, only where the kernel said the call will not block.
        for event in ready {
            let Some(client) = clients.get_mut(&event.data()) else {
                continue; // the listener or the eventfd: done in phase 2
            };
            trace!("{}: {:?}", client.peer, event.events());
            // Reset or hung up while its lines wait for the pool: neither the write nor the read
            // below would run and report it, and the hang-up would wake every wait until then.
            if event.events().intersects(gone) && !client.wants_read() && !client.wants_write() {
                let err = client.stream.take_error().ok().flatten();
                client.fail(err.unwrap_or_else(|| io::ErrorKind::ConnectionReset.into()));
            }
            // Write first, then read: a flush that brings a back-pressured client's output
            // below MAX_PENDING lets it read again at once.
            if event.events().intersects(writable) {
                flush(client);
            }
            // Once is enough: input left unread is reported again by the next wait.
            if event.events().intersects(readable) && client.wants_read() {
                handle_client_data(event.data(), client, &mut buf, &mut pool);
            }
        }
        // ANCHOR_END: read_write

        // ANCHOR: close
        // Phase 4: close, or update the registration. Only the clients named in this pass, or
        // given a reply, can have changed, so only they are visited; poll and select walk every
        // client, every pass.
        for key in touched {
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
                loops::descriptor_freed();
            }
        }
        // ANCHOR_END: close
        loops::pass_ended(woke);
    }
    Ok(loops::connections())
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
                loops::accepted();
                trace!(
                    "{peer}: connected to loop {} ({} clients, key {key})",
                    loops::id(),
                    clients.len() + 1
                );
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
                if spare.is_none() {
                    loops::starving(epoll, listener, LISTENER); // another loop took it
                }
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
/// Reads once from a ready client, and hands what is complete to the handler.
fn handle_client_data(key: u64, client: &mut Client, buf: &mut [u8], pool: &mut Pool) {
    STATS.calls.add(1);
    match client.stream.read(buf) {
        // EOF: the client will send no more. Handle what is left, flush what we owe, then close.
        Ok(0) => client.eof = true,
        Ok(n) => {
            STATS.bytes_in.add(n as u64);
            client.input.extend_from_slice(&buf[..n]);
        }
        // Not ready after all (it happens); the next pass will ask again.
        Err(e) if support::would_block(&e) => STATS.would_block.add(1),
        Err(e) if support::interrupted(&e) => {}
        Err(e) => client.fail(e),
    }
    handle_lines(key, client, pool);
}
// ANCHOR_END: handle_client_data

// ANCHOR: handle_lines
/// Hands a client's complete lines to the handler, as one batch: here in the loop, where every
/// other client waits until it is done, or on a worker. One batch at a time per client: lines
/// that arrive meanwhile wait in `input`, so that its replies come back in order.
fn handle_lines(key: u64, client: &mut Client, pool: &mut Pool) {
    if client.busy || client.queued || client.broken {
        return;
    }
    // Free lines need no line ends (the echo contract: no newline needed). Costly ones are
    // whole lines, except the last piece at EOF, or a "line" as long as the input may grow.
    let whole = pool.cost().is_zero() || client.eof || client.input.len() >= MAX_PENDING;
    let end = match client.input.iter().rposition(|&b| b == b'\n') {
        _ if whole => client.input.len(),
        Some(last) => last + 1,
        None => 0,
    };
    if end == 0 {
        return;
    }
    if pool.in_loop() {
        let mut batch: Vec<u8> = client.input.drain(..end).collect();
        LINES_IN_LOOP.add(pool::handle(&mut batch, pool.cost()));
        client.out.extend_from_slice(&batch);
        return flush(client);
    }
    // The queue to the pool is bounded: when it is full, this client waits its turn, unread.
    if pool.has_room(key) {
        pool.submit(key, client.input.drain(..end).collect());
        client.busy = true;
    } else {
        client.queued = true;
    }
}
// ANCHOR_END: handle_lines

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
