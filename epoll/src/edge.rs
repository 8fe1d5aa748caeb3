//! # epoll, edge-triggered: `cargo run -p epoll -- --edge`
//!
//! The same server as `main.rs`, with every socket registered once for everything, EPOLLET
//! added: the kernel then reports a change (new bytes, room to write), once, not a state. What
//! it reported and we did not finish is ours to remember: every accept, read and write runs
//! until WouldBlock, and a client cut short by READS_PER_EVENT is put back on the ready list.
//!
//! Watch: `-v` prints `EpollFlags(EPOLLOUT)` for a new client that owes nothing (an edge for
//! nothing), and `EPOLLRDHUP` with the end-of-file. `--read-once` is the classic bug: send
//! 10,000 bytes at once (`(python3 -c "print('a'*10000)"; sleep 5) | cargo run -q -p client`)
//! and watch the reply stop at 4096, since no new edge comes for the bytes already there.
//!
//! Diff it: `diff epoll/src/main.rs epoll/src/edge.rs` (level → edge), then
//! `diff epoll/src/edge.rs sigio/src/main.rs` (the process asks → the kernel signals).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use support::{STATS, count, say, trace};

use super::pwait::epoll_pwait;
use super::{ADDS, Args, BUF_SIZE, DELETES, EVENTS, LISTENER, MAX_EVENTS, MAX_PENDING, MODIFIES};

/// Reads per event at most, so that a client that sends as fast as we read cannot keep the
/// loop to itself (see phase 3).
const READS_PER_EVENT: usize = 16;

/// The option only the edge-triggered server has.
#[derive(clap::Args)]
pub struct Options {
    /// A deliberate bug, to watch: with --edge, read only once (4096 bytes) per event, so input
    /// beyond that stalls until the client sends again. Without --edge it changes nothing: a
    /// level-triggered wait reports the leftover bytes again.
    #[arg(long)]
    read_once: bool,
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
    /// Input may be waiting: set by an event, cleared only by a read that would block.
    readable: bool,
}

impl Client {
    fn new(stream: TcpStream, peer: SocketAddr) -> Client {
        Client {
            stream,
            peer,
            out: Vec::new(),
            eof: false,
            broken: false,
            readable: false,
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
    /// What to register: everything, once. Each edge is news, and our own state (`readable`,
    /// `wants_read`, `wants_write`) decides what it is worth.
    fn wanted(&self) -> EpollFlags {
        EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET
    }
}
// ANCHOR_END: client

pub fn run(args: &Args) -> anyhow::Result<()> {
    // ANCHOR: setup
    // Set-up: socket, bind and listen (support::listen, with a long accept queue), then
    // non-blocking mode, so that accept with nothing waiting returns WouldBlock at once.
    let listener = support::listen(args.common.addr)?;
    listener.set_nonblocking(true).context("set_nonblocking")?;
    let wait_mask = support::catch_signals()?;
    // The interest list lives in the kernel: the listener goes in once, under its own key.
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
    let listen_for = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
    epoll
        .add(&listener, EpollEvent::new(listen_for, LISTENER))
        .context("epoll_ctl(ADD, listener)")?;
    ADDS.add(1);
    support::announce(&listener)?;
    let mut spare = support::reserve_descriptor();
    let mut clients: HashMap<u64, Client> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); MAX_EVENTS];
    let mut buf = [0u8; BUF_SIZE];
    let read_once = args.edge_options.read_once;
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
        // would leave a client no event to find its end-of-file or its error by.
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
            // This event is only news, reported once: remember that input is waiting until a
            // read says WouldBlock.
            client.readable |= event.events().intersects(readable);
            // Write first, then read. A flush that brings a back-pressured client's output
            // below MAX_PENDING lets the read below go on where it stopped. This is no
            // optimisation: the bytes still queued in the kernel raised their edge long ago,
            // none will come for them, and without this read the client stalls for good.
            if event.events().intersects(writable) {
                flush(client);
            }
            // Cut short by READS_PER_EVENT, with input still waiting that no new edge will
            // announce: epoll_ctl(MOD) makes the kernel look at the socket again and put it
            // back on the ready list, behind the others, so the next wait returns with it.
            if handle_client_data(client, &mut buf, read_once) {
                MODIFIES.add(1);
                let mut again = EpollEvent::new(client.wanted(), event.data());
                if let Err(e) = epoll.modify(&client.stream, &mut again) {
                    client.fail(e.into());
                }
            }
        }
        // ANCHOR_END: read_write

        // ANCHOR: close
        // Phase 4: close. Only the clients named in this pass can have changed, so only they
        // are visited; poll and select walk every client, every pass.
        for event in ready {
            let key = event.data();
            let Some(client) = clients.get(&key) else {
                continue;
            };
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
        count(events, "edge-triggered event", "edge-triggered events"),
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
                let client = Client::new(stream, peer);
                ADDS.add(1);
                if let Err(e) = epoll.add(&client.stream, EpollEvent::new(client.wanted(), key)) {
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
            // No descriptor left. The connection stays queued, and no new edge comes for it:
            // the one that named the listener has been taken. Give back the spare descriptor,
            // accept the connection and close it, then take the spare again, and go on (the
            // rest of the queue raised its edges already, too) until the queue is empty,
            // since EMFILE comes before accept looks at the queue, or until the spare cannot
            // be taken again: going on would spin right here.
            Err(e) if support::out_of_descriptors(&e) => {
                drop(spare.take());
                let waiting = match listener.accept() {
                    Ok((_stream, peer)) => {
                        say!("accept: {e}; closing {peer} unserved");
                        true
                    }
                    Err(_) => false,
                };
                *spare = support::reserve_descriptor();
                if !waiting || spare.is_none() {
                    break;
                }
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
/// Reads from a client until its socket is empty (or it is backed up), queues the upper-cased
/// bytes, and writes what it can. Stops after READS_PER_EVENT reads all the same, and then
/// answers true: input may still be waiting, and no edge will come for it.
fn handle_client_data(client: &mut Client, buf: &mut [u8], read_once: bool) -> bool {
    for _ in 0..READS_PER_EVENT {
        if !client.readable || !client.wants_read() {
            return false;
        }
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
            // Empty: only new input makes it readable again, with a new edge.
            Err(e) if support::would_block(&e) => {
                STATS.would_block.add(1);
                client.readable = false;
            }
            Err(e) if support::interrupted(&e) => {}
            Err(e) => client.fail(e),
        }
        if read_once {
            return false; // the bug: the rest waits for an edge that never comes
        }
    }
    client.readable && client.wants_read()
}
// ANCHOR_END: handle_client_data

// ANCHOR: flush
/// Writes as much queued output as the socket takes now; what it does not take stays queued,
/// and the kernel reports an EPOLLOUT edge once the socket has room again. Never waits.
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
