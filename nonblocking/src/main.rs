//! # nonblocking: non-blocking sockets and a busy loop
//!
//! One thread serves every client. Every socket is non-blocking, so no call ever waits: each
//! pass of the loop tries `accept`, then every client's `read` and pending `write`, and most
//! of them answer "would block". Then it starts again at once, unless told to nap first.
//!
//! Run it beside the client:
//!
//! ```text
//! cargo run -p nonblocking     # terminal 1 (add --sleep-ms 500 for the lecture's remedy)
//! cargo run -p client          # terminal 2, 3, 4 ...
//! ```
//!
//! Watch: `top` shows a whole core busy while the clients are idle; `-v` prints once a second
//! how many passes and calls were made and how many answered "would block"; so does the summary
//! on Ctrl-C. `--sleep-ms N` cools the core, and every reply waits up to N ms for its pass.
//!
//! Diff it: `diff nonblocking/src/main.rs select/src/main.rs` (asking everyone → asking the
//! kernel); before that, compare `handle_client_data` with blocking's `handle_client`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use support::{Counter, STATS, count, say, trace};

/// Bytes read per `read` call.
const BUF_SIZE: usize = 4096;
/// Back-pressure: stop reading from a client while this much of its output is unsent.
const MAX_PENDING: usize = 64 * 1024;

/// Passes of the loop in which every call answered "would block": pure waste.
static EMPTY_PASSES: Counter = Counter::new();

/// An echo server that never waits: it asks every socket in turn, again and again.
/// Its cost: even with every client idle it keeps one core busy asking.
#[derive(Parser)]
#[command(verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: support::Common,
    /// Sleep this long between passes: less CPU, but every reply may wait that long.
    #[arg(long, value_name = "N", default_value_t = 0)]
    sleep_ms: u64,
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
    // catch_signals blocks Ctrl-C so that only a wait call (pselect...) can let it in; we have
    // no wait to pass its mask to, so we install the mask for good. The loop never waits
    // longer than --sleep-ms, so it sees the flag within one pass.
    let wait_mask = support::catch_signals()?;
    wait_mask.thread_set_mask().context("pthread_sigmask")?;
    support::announce(&listener)?;
    let mut spare = support::reserve_descriptor();
    let mut clients: Vec<Client> = Vec::new();
    let mut buf = [0u8; BUF_SIZE];
    let (mut traced_at, mut traced) = (Instant::now(), [0; 3]);
    // ANCHOR_END: setup

    while !support::stop_requested() {
        // ANCHOR: wait
        // Phase 1: wait. Here there is nothing to wait in: no call says who is ready, so all
        // count as ready (the listener, each client we may read from, each client we owe bytes)
        // and the calls themselves answer. (--sleep-ms is the lecture's nap between passes.)
        thread::sleep(Duration::from_millis(args.sleep_ms));
        // -v: a pass takes microseconds, so one line a second sums up the passes since the last.
        let now = [&STATS.wakeups, &STATS.calls, &STATS.would_block].map(Counter::get);
        if support::verbosity() > 0 && traced_at.elapsed() >= Duration::from_secs(1) {
            let [passes, calls, would_block] = [0, 1, 2].map(|i| now[i] - traced[i]);
            let passes = count(passes, "pass", "passes");
            let sockets = count(clients.len() as u64 + 1, "socket", "sockets");
            let secs = traced_at.elapsed().as_secs_f64();
            trace!("{passes}, {calls} calls, {would_block} would-block in {secs:.1}s ({sockets})");
            (traced_at, traced) = (Instant::now(), now);
        }
        STATS.wakeups.add(1);
        let listener_ready = true;
        let ready: Vec<(bool, bool)> = clients
            .iter()
            .map(|c| (c.wants_read(), c.wants_write()))
            .collect();
        // ANCHOR_END: wait

        // Phase 2: accept every connection waiting in the listen queue.
        if listener_ready {
            handle_new_connection(&listener, &mut clients, &mut spare);
        }

        // Phase 3: read and write, everywhere: only the call itself can say it would block.
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
        // Nothing but "would block" this pass (no useful call since `now` was taken)?
        if STATS.calls.get() - STATS.would_block.get() == now[1] - now[2] {
            EMPTY_PASSES.add(1);
        }
    }
    let empty = count(EMPTY_PASSES.get(), "pass", "passes");
    support::summary(&[format!("{empty} that found nothing to do")]);
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
        // Not ready: the usual answer in this model; the next pass will ask again.
        Err(e) if support::would_block(&e) => STATS.would_block.add(1),
        Err(e) if support::interrupted(&e) => {}
        Err(e) => client.fail(e),
    }
}
// ANCHOR_END: handle_client_data

// ANCHOR: flush
/// Writes as much queued output as the socket takes now; what it does not take stays queued,
/// and the next pass tries again, and the next, until it is gone. Never waits.
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
