//! # selectors-chat: Python's `selectors` module in Rust, and a chat room on it
//!
//! The lecture ends with Python's `selectors`: one interface over select, poll, epoll and
//! kqueue, `DefaultSelector` picking the best one this platform has, and a callback stored with
//! each registration. `selector.rs` builds that interface (read it on its own); `echo.rs` runs
//! the lecture's own callback-style example on it; `chat.rs`, the default, is a chat room.
//!
//! Run it beside the client (or `nc 127.0.0.1 8080`, in several terminals):
//!
//! ```text
//! cargo run -p selectors-chat                        # terminal 1: the chat room
//! cargo run -p client -- --follow 127.0.0.1:8080     # terminals 2, 3 ...: type, /nick ann, /who
//! cargo run -p selectors-chat -- --echo              # the echo server, as in every chapter
//! cargo run -p selectors-chat -- --selector select   # the same server on another mechanism
//! ```
//!
//! Watch: the first stderr line names the mechanism chosen; the summary counts its waits.
//! `--selector select` refuses descriptors past FD_SETSIZE, exactly as the `select` chapter does.
//!
//! Diff it: `diff select/src/main.rs selectors-chat/src/echo.rs` (the loop asks a selector, and
//! each registration carries the function to call), then read `chat.rs`: one message, many
//! output buffers.

mod chat;
mod echo;
mod selector;

use std::fs::File;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use selector::{Kind, Selector};
use support::{Counter, STATS, count, say, trace};

/// Bytes read per `read` call.
const BUF_SIZE: usize = 4096;

/// Connections refused because the selector would not take their descriptor (select's limit).
static REFUSED: Counter = Counter::new();

/// Python's selectors module in Rust: one interface over epoll, kqueue, poll and select.
/// Serves a line-based chat room (--echo: the echo), on the platform's best mechanism.
#[derive(Parser)]
#[command(verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: support::Common,

    /// Serve the echo protocol (the lecture's callback example) instead of the chat room.
    #[arg(long)]
    echo: bool,

    /// The mechanism underneath: epoll (Linux), kqueue (macOS, BSD), poll or select.
    #[arg(long, value_enum, default_value_t = Kind::best(), hide_possible_values = true)]
    selector: Kind,
}

fn main() -> ExitCode {
    let args = Args::parse();
    support::init(&args.common);
    support::finish(run(&args))
}

fn run(args: &Args) -> anyhow::Result<()> {
    // Set-up, as in every chapter: bind and listen, non-blocking, Ctrl-C, announce.
    let listener = support::listen(args.common.addr)?;
    listener.set_nonblocking(true).context("set_nonblocking")?;
    let wait_mask = support::catch_signals()?;
    support::announce(&listener)?;
    // DefaultSelector, or the one asked for. Each wait runs with `wait_mask`: Ctrl-C can
    // interrupt it and nothing else can (see selector.rs).
    let kind = args.selector;
    say!("selector: {}", kind.name());
    let extra = if args.echo {
        echo::run(listener, Selector::new(kind, Some(wait_mask))?)?
    } else {
        chat::run(listener, Selector::new(kind, Some(wait_mask))?)?
    };
    let (wait, waits) = (
        format!("{} wait", kind.name()),
        format!("{} waits", kind.name()),
    );
    let mut all = vec![count(STATS.wakeups.get(), &wait, &waits)];
    all.extend(extra);
    all.push(format!("{} refused by the selector", REFUSED.get()));
    support::summary(&all);
    Ok(())
}

// ANCHOR: handle_new_connection
/// Accepts every waiting connection, until accept answers WouldBlock, and returns them
/// non-blocking, for the echo's or the chat's `accept` callback to register.
fn handle_new_connection(
    listener: &TcpListener,
    spare: &mut Option<File>,
) -> Vec<(TcpStream, SocketAddr)> {
    let mut accepted = Vec::new();
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
                accepted.push((stream, peer));
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
    accepted
}
// ANCHOR_END: handle_new_connection

/// A connection the selector would not take (select's FD_SETSIZE): say why, then drop it.
fn refuse(peer: SocketAddr, err: io::Error) {
    REFUSED.add(1);
    say!("refusing {peer}: {err}");
}

// ANCHOR: flush
/// Writes as much of `out` as the socket takes now; what it does not take stays queued.
/// Never waits. An error (reset, broken pipe) is returned for the caller to drop the client.
fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    while !out.is_empty() {
        STATS.calls.add(1);
        match stream.write(out) {
            Ok(n) => {
                STATS.bytes_out.add(n as u64);
                out.drain(..n);
            }
            // The socket's send buffer is full: the client is not reading fast enough.
            Err(e) if support::would_block(&e) => {
                STATS.would_block.add(1);
                break;
            }
            Err(e) if support::interrupted(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
// ANCHOR_END: flush
