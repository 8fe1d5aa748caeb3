//! # sigio: signal-driven I/O with `O_ASYNC` and `F_SETSIG`
//!
//! One thread serves every client, and it never asks the kernel which sockets are ready: the
//! kernel tells it. Every socket is set to `O_ASYNC`, owned by this process (`F_SETOWN`), with a
//! real-time signal (`F_SETSIG`), so that each time one becomes readable or writable the kernel
//! queues a signal whose siginfo names the descriptor (`si_fd`) and the event (`si_band`). The
//! signals are blocked, never handled: the loop takes them one at a time with `sigwaitinfo`,
//! then does the non-blocking reads and writes itself, each until it would block.
//!
//! Run it beside the client:
//!
//! ```text
//! cargo run -p sigio           # terminal 1
//! cargo run -p client          # terminal 2, 3, 4 ...
//! ```
//!
//! Watch: `-v` prints every signal (`signal: fd 5 PollFlags(POLLIN | POLLRDNORM)`); one wake-up
//! answers for one socket and one event, where epoll_wait hands back a batch. The signal queue is bounded (`ulimit -i`,
//! RLIMIT_SIGPENDING); when it overflows the kernel sends a plain SIGIO that names nothing, and
//! the server must try every socket (`SIGIO: ... rescanning`). Linux only: F_SETSIG is Linux's.
//!
//! Diff it: `diff epoll/src/edge.rs sigio/src/main.rs` (the process asks → the kernel signals;
//! epoll's edge-triggered server is the neighbour, since a signal, like an edge, comes once).

// Elsewhere, only `run`'s refusal is compiled; the rest of the file is the Linux model.
#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use libc::{POLLERR, POLLHUP, POLLIN, POLLOUT, c_long};
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::signal::Signal;
use support::{Counter, STATS, count, say, trace};

#[cfg(target_os = "linux")]
mod signals; // arm a socket, block the signals, take them one at a time
#[cfg(target_os = "linux")]
use signals::{arm, block_signals, io_signal, next_signal};

/// Bytes read per `read` call.
const BUF_SIZE: usize = 4096;
/// Back-pressure: stop reading from a client while this much of its output is unsent.
const MAX_PENDING: usize = 64 * 1024;
/// Reads per signal at most, so that a client that sends as fast as we read cannot keep the
/// loop to itself (see `unfinished`).
const READS_PER_EVENT: usize = 16;

/// `si_band` bits that send us to `read` ...
const READABLE: c_long = (POLLIN | POLLERR | POLLHUP) as c_long;
/// ... and to `write`. An error or a hang-up sends us to both, so that the read or the write
/// reports it: a client whose reading is paused (back-pressure, or after its EOF) only writes,
/// and its reset raises no other signal. A rescan, knowing nothing, tries both.
const WRITABLE: c_long = (POLLOUT | POLLERR | POLLHUP) as c_long;

/// Plain SIGIOs received: the signal queue overflowed and every socket was tried.
static OVERFLOWS: Counter = Counter::new();
/// Signals that named a descriptor already closed (queued before its client went away).
static STALE: Counter = Counter::new();

/// An echo server driven by signals: the kernel queues a real-time signal for each ready socket.
/// Its limits: one wake-up per event, a bounded queue (overflow means a rescan), Linux only.
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

#[cfg(not(target_os = "linux"))]
fn run(_: &Args) -> anyhow::Result<()> {
    anyhow::bail!(
        "signal-driven I/O needs Linux: F_SETSIG, which makes the signal name the ready \
         descriptor, exists nowhere else; use the poll chapter's server there"
    )
}

#[cfg(target_os = "linux")]
fn run(args: &Args) -> anyhow::Result<()> {
    // ANCHOR: setup
    // Set-up: socket, bind and listen (support::listen, with a long accept queue). Block the
    // signals first, then arm the listener: an unblocked real-time signal would kill us.
    let listener = support::listen(args.common.addr)?;
    let wait_set = block_signals().context("pthread_sigmask")?;
    arm(listener.as_fd()).context("O_ASYNC on the listener")?;
    support::announce(&listener)?;
    let mut spare = support::reserve_descriptor();
    let mut clients: HashMap<RawFd, Client> = HashMap::new();
    // Clients cut short by READS_PER_EVENT: their input may still wait, and its signal has
    // been taken, so we keep our own list of them.
    let mut unfinished: HashSet<RawFd> = HashSet::new();
    let mut buf = [0u8; BUF_SIZE];
    // ANCHOR_END: setup

    while !support::stop_requested() {
        // ANCHOR: wait
        // Phase 1: wait. Each socket's events wait in the process's signal queue, in order;
        // sigwaitinfo takes the next one with its siginfo: which descriptor, which event. One
        // signal, one socket: no set to build, and no batch either. All the signals we wait for
        // stay blocked, so none is ever delivered to a handler: Ctrl-C is taken here too (ahead
        // of queued real-time signals, as the lowest-numbered pending signal goes first). With
        // clients left unfinished, it only glances at the queue: they are ready already.
        let info = match next_signal(&wait_set, unfinished.is_empty()) {
            Ok(info) => Some(info),
            Err(Errno::EAGAIN) => None, // nothing queued: on with the unfinished
            Err(Errno::EINTR) => continue, // a stop (SIGSTOP, Ctrl-Z) and SIGCONT end the wait
            Err(e) => return Err(e).context("sigwaitinfo"),
        };
        STATS.wakeups.add(1);
        let mut listener_ready = false;
        let mut ready: Vec<(RawFd, c_long)> = unfinished.drain().map(|fd| (fd, READABLE)).collect();
        match info {
            None => {}
            // From the kernel (si_code is then POLL_IN, POLL_OUT, ...), for one descriptor.
            Some(info) if info.si_signo == io_signal() && info.si_code > 0 => {
                // SAFETY: a signal sent for O_ASYNC, with F_SETSIG set, fills si_fd and si_band.
                let (fd, band) = unsafe { (info.si_fd(), info.si_band()) };
                trace!(
                    "signal: fd {fd} {:?}",
                    PollFlags::from_bits_truncate(band as _)
                );
                if fd == listener.as_raw_fd() {
                    listener_ready = true;
                } else {
                    ready.push((fd, band));
                }
            }
            Some(info) if matches!(info.si_signo, libc::SIGINT | libc::SIGTERM) => {
                support::record_stop(Signal::try_from(info.si_signo)?);
                continue;
            }
            // The queue was full (RLIMIT_SIGPENDING) and the kernel sent a plain SIGIO instead:
            // some events are lost and nothing says which. Try every socket, as a poll would.
            // (Also a real-time signal sent by hand, `kill -SIGRTMIN+1`, which names nothing.)
            Some(_) => {
                OVERFLOWS.add(1);
                let all = count(clients.len() as u64, "client", "clients");
                trace!("SIGIO: signal queue overflowed; rescanning {all}");
                listener_ready = true;
                ready.extend(clients.keys().map(|&fd| (fd, READABLE | WRITABLE)));
            }
        }
        // ANCHOR_END: wait

        // Phase 2: accept every connection waiting in the listen queue.
        if listener_ready {
            handle_new_connection(&listener, &mut clients, &mut spare, &mut ready);
        }

        // Phase 3: read and write, on the sockets the signals named, each until it would block:
        // a signal reports a change once, and no later one repeats it for bytes still waiting.
        // (Reading stops sooner after READS_PER_EVENT reads; the client is then unfinished.)
        for &(fd, band) in &ready {
            // Queued before its client closed: the descriptor is gone, or, reused, belongs to a
            // newer client, whose calls then just answer would-block.
            let Some(client) = clients.get_mut(&fd) else {
                STALE.add(1);
                continue;
            };
            let paused = !client.wants_read();
            if band & WRITABLE != 0 {
                flush(client);
            }
            // A flush that brought a paused client back under MAX_PENDING reads at once: the
            // bytes waiting in its socket raised their signal while it was paused, and no other
            // will come for them.
            if (band & READABLE != 0 || (paused && client.wants_read()))
                && handle_client_data(client, &mut buf)
            {
                unfinished.insert(fd);
            }
        }

        // Phase 4: close. Only the clients named in this pass can have changed, so only they
        // are visited; poll and select walk every client, every pass.
        for (fd, _) in &ready {
            let Some(client) = clients.get(fd) else {
                continue;
            };
            if client.finished() {
                trace!(
                    "{}: closed ({} bytes unsent)",
                    client.peer,
                    client.out.len()
                );
                clients.remove(fd); // dropping the stream closes the descriptor
            }
        }
    }
    support::summary(&[
        count(
            OVERFLOWS.get(),
            "queue overflow (SIGIO) / rescan",
            "queue overflows (SIGIO) / rescans",
        ),
        count(STALE.get(), "signal", "signals") + " for closed descriptors",
    ]);
    Ok(())
}

// ANCHOR: handle_new_connection
/// Accepts every waiting connection, until accept answers WouldBlock.
#[cfg(target_os = "linux")]
fn handle_new_connection(
    listener: &TcpListener,
    clients: &mut HashMap<RawFd, Client>,
    spare: &mut Option<File>,
    ready: &mut Vec<(RawFd, c_long)>,
) {
    loop {
        STATS.calls.add(1);
        match listener.accept() {
            Ok((stream, peer)) => {
                // The accepted socket inherits neither O_NONBLOCK nor O_ASYNC: arm it.
                if let Err(e) = arm(stream.as_fd()) {
                    trace!("{peer}: O_ASYNC: {e}");
                    continue;
                }
                STATS.connections.add(1);
                let n = count(clients.len() as u64 + 1, "client", "clients");
                trace!("{peer}: connected ({n})");
                // Its first bytes may have arrived before it was armed, and raised no signal:
                // read it now, as if one had come.
                let fd = stream.as_raw_fd();
                clients.insert(fd, Client::new(stream, peer));
                ready.push((fd, READABLE));
            }
            // The queue is empty: every waiting connection has been accepted.
            Err(e) if support::would_block(&e) => {
                STATS.would_block.add(1);
                break;
            }
            Err(e) if support::interrupted(&e) => {}
            // No descriptor left. The connection stays queued, and no new signal comes for it:
            // the one that named the listener has been taken. Give back the spare descriptor,
            // accept the connection and close it, then take the spare again, and go on (the
            // rest of the queue raised its signals already, too) until the queue is empty,
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
/// answers true: input may still be waiting, and no signal will come for it.
fn handle_client_data(client: &mut Client, buf: &mut [u8]) -> bool {
    for _ in 0..READS_PER_EVENT {
        if !client.wants_read() {
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
            // Empty: the next bytes will raise the next signal.
            Err(e) if support::would_block(&e) => {
                STATS.would_block.add(1);
                return false;
            }
            Err(e) if support::interrupted(&e) => {}
            Err(e) => client.fail(e),
        }
    }
    client.wants_read()
}
// ANCHOR_END: handle_client_data

// ANCHOR: flush
/// Writes as much queued output as the socket takes now; what it does not take stays queued,
/// and the kernel signals POLL_OUT once the socket has room again. Never waits.
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
