//! # reactor: beyond one thread
//!
//! epoll's level-triggered loop, with a handler that costs CPU: while it handles one client's
//! lines, every other client waits. Then the two ways past that: a worker pool behind the loop
//! (`--workers`, pool.rs), and one loop per core, all on one port (`--loops`, loops.rs):
//! ```text
//! cargo run -p reactor -- --work-us 1000                    # terminal 1 (then with --workers 4)
//! (seq 1000; sleep 2) | cargo run -q -p client -- --follow   # terminal 2: 1000 lines at once
//! cargo run -p client                                       # terminal 3: a line waits for them
//! ```
//! Watch the summary on Ctrl-C. Diff it: `diff epoll/src/main.rs reactor/src/main.rs`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use support::{Counter, STATS, count, say, trace};

mod loops; // one loop per thread, each with its own listener on one port (SO_REUSEPORT)
mod pool; // the handler, and the workers that can run it off the loop
#[path = "../../epoll/src/pwait.rs"]
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
const WAKER: u64 = u64::MAX - 1; // the loop's eventfd: a batch is back, or a loop stopped

/// Events epoll_wait handed back, and epoll_ctl calls by kind: the work poll did every pass.
static EVENTS: Counter = Counter::new();
static ADDS: Counter = Counter::new();
static MODIFIES: Counter = Counter::new();
static DELETES: Counter = Counter::new();

/// One connected client: its socket and the bytes we owe it.
struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    /// Upper-cased bytes not yet written (a slow reader's backlog, at most ~MAX_PENDING).
    out: Vec<u8>,
    /// Bytes read and not yet handled, and whether a batch of them is at the pool (pool.rs).
    lines: pool::Lines,
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
            lines: pool::Lines::default(),
            eof: false,
            broken: false,
            interest: EpollFlags::empty(),
        }
    }
    /// Read interest: not after EOF, and not while its output or its lines are backed up (pool.rs).
    fn wants_read(&self) -> bool {
        !self.eof && !self.broken && self.out.len() < MAX_PENDING && self.lines.may_read()
    }
    /// Write interest: only while there is something to write.
    fn wants_write(&self) -> bool {
        !self.broken && !self.out.is_empty()
    }
    fn finished(&self) -> bool {
        self.broken || (self.eof && self.out.is_empty() && self.lines.all_handled())
    }
    fn fail(&mut self, err: io::Error) {
        trace!("{}: {err}; closing", self.peer);
        self.broken = true;
        self.lines = pool::Lines::default(); // nobody would read the replies to its lines
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

fn main() -> ExitCode {
    let args = loops::args(); // the options are in loops.rs
    support::init(&args.common);
    support::finish(loops::start(&args, run))
}

fn run(me: loops::Loop) -> anyhow::Result<()> {
    // Set-up: socket, bind and listen were done by loops::start, for every loop at once, then
    // non-blocking mode, so that accept with nothing waiting returns WouldBlock at once.
    let (listener, wait_mask, mut pool) = (me.listener, me.wait_mask, me.pool);
    listener.set_nonblocking(true).context("set_nonblocking")?;
    // The interest list lives in the kernel: the listener goes in once, under its own key.
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
    let listen_for = EpollFlags::EPOLLIN;
    epoll
        .add(&listener, EpollEvent::new(listen_for, LISTENER))
        .context("epoll_ctl(ADD, listener)")?;
    epoll
        .add(&*me.waker, EpollEvent::new(listen_for, WAKER))
        .context("epoll_ctl(ADD, eventfd)")?; // and the eventfd: workers and other loops wake us
    ADDS.add(2);
    let mut spare = support::reserve_descriptor();
    me.set_up.announce(&listener)?; // once every loop holds all it needs
    let mut clients: HashMap<u64, Client> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); MAX_EVENTS];
    let mut buf = [0u8; BUF_SIZE];

    while !support::stop_requested() {
        // Phase 1: wait. Nothing is rebuilt: every socket was registered when it arrived, and
        // epoll_wait fills `events` with the ready ones only, each tagged with the key we gave it.
        // (epoll_pwait is epoll_wait plus a signal mask: Ctrl-C can interrupt the wait and only it.)
        let n = match epoll_pwait(&epoll, &mut events, &wait_mask) {
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
        let _pass = loops::Pass::begin(); // timed until the pass ends, for the summary
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

        // Phase 2: accept every connection waiting in the listen queue.
        if listener_ready {
            handle_new_connection(&listener, &epoll, &mut clients, &mut spare);
        }

        // ANCHOR: results
        // Phase 2½: the eventfd woke us: take in the batches the workers finished. Each reply
        // goes out, and its client's next batch goes to the pool, then those waiting for room.
        let mut touched: Vec<u64> = ready.iter().map(|event| event.data()).collect();
        if ready.iter().any(|event| event.data() == WAKER) {
            loops::woken(&epoll, &listener, LISTENER, &mut spare);
            pool.collect();
        }
        while let Some(turn) = pool.next_turn() {
            let Some(client) = clients.get_mut(&turn.key) else {
                continue; // it left while its lines were worked on, or waited
            };
            client.lines.turn_came();
            client.out.extend_from_slice(&turn.reply);
            flush(client);
            handle_lines(turn.key, client, &mut pool);
            touched.push(turn.key);
        }
        // ANCHOR_END: results

        // Phase 3: read and write, only where the kernel said the call will not block.
        for event in ready {
            let Some(client) = clients.get_mut(&event.data()) else {
                continue; // the listener or the eventfd: done above
            };
            trace!("{}: {:?}", client.peer, event.events());
            // Hung up while neither read nor written (its lines wait): nothing below would see it.
            if event.events().intersects(gone) && client.wanted().is_empty() {
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

        // Phase 4: close, or update the registration. Only the clients named in this pass, or
        // given a reply (`touched`), can have changed, so only they are visited.
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
    }
    let events = EVENTS.get();
    loops::summary(&[
        count(events, "level-triggered event", "level-triggered events"),
        format!("{} epoll_ctl add", ADDS.get()),
        format!("{} modify", MODIFIES.get()),
        format!("{} delete", DELETES.get()),
    ]);
    Ok(())
}

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
                let id = loops::accepted(); // which loop, for -v and the summary
                let n = count(clients.len() as u64 + 1, "client", "clients");
                trace!("{peer}: connected to loop {id} ({n}, key {key})");
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
                *spare = loops::reserve_descriptor(epoll, listener, LISTENER); // loops race for it
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

/// Reads once from a ready client, and hands what is complete to the handler.
fn handle_client_data(key: u64, client: &mut Client, buf: &mut [u8], pool: &mut pool::Pool) {
    STATS.calls.add(1);
    match client.stream.read(buf) {
        // EOF: the client will send no more. Flush what we owe, then close.
        Ok(0) => client.eof = true,
        Ok(n) => {
            STATS.bytes_in.add(n as u64);
            client.lines.push(&buf[..n]);
        }
        // Not ready after all (it happens); the next pass will ask again.
        Err(e) if support::would_block(&e) => STATS.would_block.add(1),
        Err(e) if support::interrupted(&e) => {}
        Err(e) => client.fail(e),
    }
    handle_lines(key, client, pool);
}

// ANCHOR: handle_lines
/// Runs the handler on a client's complete lines, one batch at a time: here in the loop, where
/// every other client waits until it is done, or on a worker, the reply coming back in phase 2½.
fn handle_lines(key: u64, client: &mut Client, pool: &mut pool::Pool) {
    let Some(mut batch) = pool.next_batch(key, &mut client.lines, client.eof) else {
        return; // no whole line yet, or not its turn (see pool.rs)
    };
    if pool.in_loop() {
        pool::LINES_IN_LOOP.add(pool::handle(&mut batch, pool.cost()));
        client.out.extend_from_slice(&batch);
        return flush(client);
    }
    pool.submit(key, batch);
}
// ANCHOR_END: handle_lines

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
