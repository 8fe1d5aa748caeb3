//! # poll: I/O multiplexing with `poll(2)`
//!
//! One thread serves every client. Each pass of the loop hands the kernel one array of pollfd,
//! one entry per socket saying what we wait for (POLLIN, POLLOUT), sleeps in `poll` until at
//! least one of them is ready, then makes only the calls that will not block.
//!
//! Run it beside the client:
//!
//! ```text
//! cargo run -p poll            # terminal 1
//! cargo run -p client          # terminal 2, 3, 4 ...
//! ```
//!
//! Watch: `-v` prints every wake-up (`3 ready of 5 watched`); `top` shows ~0% CPU while the
//! clients are idle. An array has room for any descriptor, so there is no ceiling: 5000 clients
//! are fine. The cost left: every pass copies the whole array in and the kernel scans all of it.
//!
//! Diff it: `diff select/src/main.rs poll/src/main.rs` (bitmaps → an array of pollfd), then
//! `diff poll/src/main.rs epoll/src/main.rs` (an array each pass → a set kept in the kernel).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use support::{Counter, STATS, count, say, trace};

mod compat; // ppoll, or a stand-in where the platform has none (macOS)
use compat::ppoll;

/// Bytes read per `read` call.
const BUF_SIZE: usize = 4096;
/// Back-pressure: stop reading from a client while this much of its output is unsent.
const MAX_PENDING: usize = 64 * 1024;

/// pollfd entries handed to the kernel, summed over every pass: the work epoll saves.
static WATCHED: Counter = Counter::new();

/// An echo server that waits in poll(2): one thread, many clients, no busy loop.
/// No ceiling: an array of pollfd takes any descriptor, where select's bitmap stops at 1024.
#[derive(Parser)]
#[command(verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: support::Common,
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
}

impl Client {
    fn new(stream: TcpStream, peer: SocketAddr) -> Client {
        Client {
            stream,
            peer,
            out: Vec::new(),
            eof: false,
            broken: false,
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
}
// ANCHOR_END: client

fn main() -> ExitCode {
    let args = Args::parse();
    support::init(&args.common);
    support::finish(run(&args))
}

fn run(args: &Args) -> anyhow::Result<()> {
    // ANCHOR: setup
    // Set-up: socket, bind and listen (support::listen, with a long accept queue), then
    // non-blocking mode, so that accept with nothing waiting returns WouldBlock at once.
    let listener = support::listen(args.common.addr)?;
    listener.set_nonblocking(true).context("set_nonblocking")?;
    let wait_mask = support::catch_signals()?;
    support::announce(&listener)?;
    let mut spare = support::reserve_descriptor();
    let mut clients: Vec<Client> = Vec::new();
    let mut buf = [0u8; BUF_SIZE];
    // ANCHOR_END: setup

    while !support::stop_requested() {
        // ANCHOR: wait
        // Phase 1: wait. poll() answers beside each request, but the array borrows the sockets
        // that `clients` owns, so it is rebuilt on every pass: the listener, then every client,
        // with POLLIN if we may read from it, POLLOUT if we owe it bytes.
        // (ppoll is poll plus a signal mask: Ctrl-C can interrupt the wait and only it.)
        let mut pollfds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        for client in &clients {
            let mut events = PollFlags::empty();
            if client.wants_read() {
                events |= PollFlags::POLLIN;
            }
            if client.wants_write() {
                events |= PollFlags::POLLOUT;
            }
            pollfds.push(PollFd::new(client.stream.as_fd(), events));
        }
        WATCHED.add(pollfds.len() as u64);
        match ppoll(&mut pollfds, None, Some(wait_mask)) {
            Ok(n) => trace!("ppoll: {n} ready of {} watched", clients.len() + 1),
            Err(Errno::EINTR) => continue, // a signal arrived; the loop condition decides
            Err(e) => return Err(e).context("poll"),
        }
        // A wait that finds a socket ready at once returns without letting a Ctrl-C in: it
        // stays pending, blocked. Under steady load that is every wait, so ask after each one.
        if support::stop_pending() {
            break;
        }
        STATS.wakeups.add(1);
        // POLLHUP and POLLERR come back whether asked for or not: count them as readable, so
        // that the read reports the EOF or the error; ignored, they would make every poll
        // return at once, for ever. (Bits nix does not know: let the read find out too.)
        let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        let answer = |p: &PollFd| p.revents().unwrap_or(PollFlags::POLLERR);
        let listener_ready = answer(&pollfds[0]).intersects(readable);
        let ready: Vec<(bool, bool)> = pollfds[1..]
            .iter()
            .map(|p| {
                (
                    answer(p).intersects(readable),
                    answer(p).contains(PollFlags::POLLOUT),
                )
            })
            .collect();
        // ANCHOR_END: wait

        // Phase 2: accept every connection waiting in the listen queue.
        if listener_ready {
            handle_new_connection(&listener, &mut clients, &mut spare);
        }

        // Phase 3: read and write, only where the kernel said the call will not block.
        for (client, (readable, writable)) in clients.iter_mut().zip(ready) {
            if readable {
                handle_client_data(client, &mut buf);
            }
            if writable {
                flush(client);
            }
        }

        // Phase 4: close. retain() visits every entry once; deleting from a list while walking
        // it by index skips the entry that slides into the gap, a bug classic servers carried.
        clients.retain(|client| {
            if client.finished() {
                trace!(
                    "{}: closed ({} bytes unsent)",
                    client.peer,
                    client.out.len()
                );
            }
            !client.finished()
        });
    }
    support::summary(&[count(WATCHED.get(), "pollfd entry", "pollfd entries") + " passed to poll"]);
    Ok(())
}

// ANCHOR: handle_new_connection
/// Accepts every waiting connection, until accept answers WouldBlock.
fn handle_new_connection(
    listener: &TcpListener,
    clients: &mut Vec<Client>,
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
                STATS.connections.add(1);
                let n = count(clients.len() as u64 + 1, "client", "clients");
                trace!("{peer}: connected ({n})");
                clients.push(Client::new(stream, peer));
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
/// and the client keeps asking for POLLOUT until it is gone. Never waits.
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
