//! # blocking: the first model, and the classic ways to serve more than one client with it
//!
//! Every call here blocks: `accept` until a client connects, `read` until it sends something,
//! `write` until the kernel has room. One thread can therefore serve one client at a time, and
//! the four `--mode`s are the four classic answers to that:
//!
//! - `single`: the iterative server. A second client connects (the kernel completes the
//!   handshake and queues it) but is not served until the first leaves.
//! - `thread`: a thread per connection. Simple, and fine for hundreds of clients.
//! - `fork`: a process per connection, reaped with `waitpid` when it exits (`fork.rs`).
//! - `pool` (default): a fixed pool of `--workers` threads. Client N+1 waits in the queue
//!   until a worker is free: the pool's upper limit, which the server announces on stderr.
//!
//! Run it beside the client:
//!
//! ```text
//! cargo run -p blocking -- --mode pool --workers 2    # terminal 1
//! cargo run -p client                                 # terminals 2, 3 and 4
//! ```
//!
//! Watch: with two workers the third client's line gets no answer until another client quits
//! (Ctrl-D); `ps -T -p PID` (the pid it announced) shows the threads, `ps -f --ppid PID` the
//! processes.
//!
//! Diff it: this file has no neighbour to diff against; read `handle_client`, then compare it
//! with `handle_client_data` in `nonblocking/src/main.rs`, where `read` may not wait.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use nix::unistd::Pid;
use support::{Counter, STATS, count, say, trace};

mod fork; // --mode fork: a process per connection, and the reaping of them

/// Bytes read per `read` call.
const BUF_SIZE: usize = 4096;

/// A blocking echo server: every call waits, so each client needs its own thread or process,
/// or waits its turn. --mode pool shows the limit of a thread pool.
#[derive(Parser)]
#[command(verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: support::Common,

    /// How to serve more clients: single, thread, fork (one per client) or pool (of --workers).
    #[arg(long, value_enum, default_value_t = Mode::Pool, hide_possible_values = true)]
    mode: Mode,

    /// Worker threads in the pool (`--mode pool`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: u32,

    /// Connections that may wait for a pool worker; past that, new ones are closed at once.
    #[arg(long, default_value_t = 64)]
    queue: usize,

    /// Most clients served at once by `--mode thread` or `--mode fork`; past that, refused.
    #[arg(long, default_value_t = 1000)]
    max_clients: usize,

    /// CPU time every line (`\n`) costs before its reply, in µs, as in the reactor chapter:
    /// paid on the client's own thread, so no other client waits for it.
    #[arg(long, default_value_t = 0, value_name = "N")]
    work_us: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One client at a time (the iterative server).
    Single,
    /// A thread per connection.
    Thread,
    /// A process per connection.
    Fork,
    /// A fixed pool of worker threads.
    Pool,
}

/// Clients being served right now, and the most there ever were at once.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The most clients connected at once (`--mode pool`): served, or waiting for a worker.
static PEAK_CONNECTED: AtomicUsize = AtomicUsize::new(0);
/// Connections closed unserved because a limit was reached.
static REFUSED: Counter = Counter::new();
/// Clients that had to wait for a pool worker (`--mode pool`).
static WAITED: Counter = Counter::new();
/// `--work-us`: the CPU every line costs.
static WORK_US: AtomicU64 = AtomicU64::new(0);

fn main() -> ExitCode {
    let args = Args::parse();
    support::init(&args.common);
    support::finish(run(&args))
}

fn run(args: &Args) -> anyhow::Result<()> {
    WORK_US.store(args.work_us, Ordering::Relaxed);
    // Ctrl-C: nothing here can be woken from `accept` or `read` without a race, so a thread
    // of its own waits for SIGINT/SIGTERM, prints the summary and ends the process.
    let children: Arc<Mutex<HashSet<Pid>>> = Arc::default();
    let to_stop = Arc::clone(&children);
    let mode = args.mode;
    support::exit_on_signal(move || {
        fork::stop_children(&to_stop);
        let peak = count(PEAK.load(Ordering::Relaxed) as u64, "client", "clients");
        let peak = format!("at most {peak} served at once");
        let refused = format!("{} refused at a limit", REFUSED.get());
        match mode {
            Mode::Single => support::summary(&[]),
            Mode::Thread => support::summary(&[peak, refused]),
            Mode::Fork => {
                let reaped = count(fork::REAPED.get(), "child reaped", "children reaped");
                support::summary(&[peak, refused, reaped])
            }
            Mode::Pool => {
                let connected = PEAK_CONNECTED.load(Ordering::Relaxed);
                let connected = format!("at most {connected} connected at once");
                let waited = format!("{} waited for a worker", WAITED.get());
                support::summary(&[peak, connected, refused, waited])
            }
        }
    })?;

    // ANCHOR: setup
    // Set-up: socket, bind and listen (support::listen, with a long accept queue).
    // The listener stays blocking: accept() sleeps until a client arrives.
    let listener = support::listen(args.common.addr)?;
    support::announce(&listener)?;
    // A descriptor held in reserve, for accept to give back when none are left.
    let spare = support::reserve_descriptor();
    // ANCHOR_END: setup

    match args.mode {
        Mode::Single => serve_single(&listener, spare),
        Mode::Thread => serve_threads(&listener, spare, args.max_clients),
        Mode::Fork => fork::serve_processes(listener, spare, args.max_clients, &children)?,
        Mode::Pool => serve_pool(&listener, spare, args.workers as usize, args.queue),
    }
    Ok(())
}

// ANCHOR: accept
/// Blocks until the next client connects; counts it. Returns None when accept failed, which
/// is that client's trouble (it gave up, or we are out of descriptors), not the server's.
fn accept(listener: &TcpListener, spare: &mut Option<File>) -> Option<(TcpStream, SocketAddr)> {
    STATS.calls.add(1);
    match listener.accept() {
        Ok((stream, peer)) => {
            STATS.connections.add(1);
            Some((stream, peer))
        }
        // Out of descriptors: accept fails at once, before it even waits for a client, so
        // calling it again would spin. Give back the spare and accept into its slot (this
        // waits for the next client). If a descriptor is free beside the spare, clients have
        // left since: serve this one. If not, close it unserved, and take the spare back.
        Err(e) if support::out_of_descriptors(&e) => {
            drop(spare.take());
            let accepted = listener.accept();
            *spare = support::reserve_descriptor();
            match accepted {
                Ok((stream, peer)) if spare.is_some() => {
                    STATS.connections.add(1);
                    Some((stream, peer))
                }
                Ok((stream, peer)) => {
                    drop(stream);
                    say!("accept: {e}; closing {peer} unserved");
                    *spare = support::reserve_descriptor();
                    None
                }
                // No spare to give back (something else took the descriptor): pause, not spin.
                Err(e) if support::out_of_descriptors(&e) => {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
                Err(_) => None,
            }
        }
        Err(e) => {
            if !support::interrupted(&e) {
                say!("accept: {e}");
            }
            None
        }
    }
}
// ANCHOR_END: accept

// ANCHOR: single
/// The iterative server: serve one client to the end, then accept the next. Meanwhile the
/// kernel completes other clients' handshakes and queues them on the listener's backlog.
fn serve_single(listener: &TcpListener, mut spare: Option<File>) {
    loop {
        let Some((stream, peer)) = accept(listener, &mut spare) else {
            continue;
        };
        say!("serving {peer}; any other client waits in the listen queue until it leaves");
        let started = Instant::now();
        handle_client(stream, peer);
        say!(
            "{peer} left after {:.1} s; accepting the next",
            started.elapsed().as_secs_f64()
        );
    }
}
// ANCHOR_END: single

// ANCHOR: threads
/// A thread per connection: the blocking calls of one client stall only its own thread.
fn serve_threads(listener: &TcpListener, mut spare: Option<File>, max_clients: usize) {
    loop {
        let Some((stream, peer)) = accept(listener, &mut spare) else {
            continue;
        };
        if ACTIVE.load(Ordering::Relaxed) >= max_clients {
            REFUSED.add(1);
            say!("refusing {peer}: {max_clients} threads already serve clients (--max-clients)");
            continue;
        }
        let begin = enter();
        let spawned = std::thread::Builder::new()
            .name("client".into())
            .spawn(move || {
                handle_client(stream, peer);
                leave(begin);
            });
        if let Err(e) = spawned {
            // The closure, and with it the stream, is dropped: the client sees EOF.
            say!("cannot start a thread for {peer}: {e}");
            ACTIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
// ANCHOR_END: threads

// ANCHOR: pool
/// A fixed pool of worker threads fed by a queue. When every worker is busy, a new client is
/// accepted but only queued: it is connected, and nobody answers it until a worker is free.
fn serve_pool(listener: &TcpListener, mut spare: Option<File>, workers: usize, queue: usize) {
    let pool = threadpool::Builder::new()
        .num_threads(workers)
        .thread_name("worker".into())
        .build();
    // Clients handed to the pool and not yet done: the first `workers` are being served, the
    // rest wait in its queue. (Counted here, not asked of the pool: a job an idle worker has
    // not picked up yet still looks queued there.)
    let in_pool = Arc::new(AtomicUsize::new(0));
    loop {
        let Some((stream, peer)) = accept(listener, &mut spare) else {
            continue;
        };
        let taken = in_pool.load(Ordering::SeqCst);
        let waiting = taken.saturating_sub(workers);
        if taken >= workers + queue {
            REFUSED.add(1);
            say!(
                "refusing {peer}: all {workers} workers busy, {waiting} clients waiting (--queue)"
            );
            continue;
        }
        let busy = in_pool.fetch_add(1, Ordering::SeqCst) >= workers;
        PEAK_CONNECTED.fetch_max(taken + 1, Ordering::Relaxed);
        if busy {
            WAITED.add(1);
            say!(
                "all {workers} workers busy: {peer} waits in the queue ({} waiting)",
                waiting + 1
            );
        }
        let queued_at = Instant::now();
        let done = Arc::clone(&in_pool);
        pool.execute(move || {
            if busy {
                let waited = queued_at.elapsed().as_secs_f64();
                say!("a worker is free: serving {peer} after {waited:.1} s in the queue");
            }
            let begin = enter();
            handle_client(stream, peer);
            leave(begin);
            done.fetch_sub(1, Ordering::SeqCst);
        });
    }
}
// ANCHOR_END: pool

/// Counts a client in; returns when it started, for the trace.
fn enter() -> Instant {
    let now = ACTIVE.fetch_add(1, Ordering::Relaxed) + 1;
    PEAK.fetch_max(now, Ordering::Relaxed);
    Instant::now()
}

fn leave(began: Instant) {
    ACTIVE.fetch_sub(1, Ordering::Relaxed);
    trace!("client done after {:.1} s", began.elapsed().as_secs_f64());
}

// ANCHOR: handle_client
/// Serves one client to the end: read, upper-case, write back, until EOF. Each call blocks
/// this thread (and only this thread); a client that does not read its replies makes
/// `write_all` wait, which stops us reading from it too: back-pressure comes for free.
fn handle_client(mut stream: TcpStream, peer: SocketAddr) {
    trace!("{peer}: connected");
    let mut buf = [0u8; BUF_SIZE];
    loop {
        STATS.calls.add(1);
        let n = match stream.read(&mut buf) {
            Ok(0) => break, // EOF: nothing is pending (we reply before reading again)
            Ok(n) => n,
            Err(e) if support::interrupted(&e) => continue,
            Err(e) => {
                trace!("{peer}: {e}; closing");
                return;
            }
        };
        STATS.bytes_in.add(n as u64);
        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        support::spin(Duration::from_micros(
            WORK_US.load(Ordering::Relaxed) * lines,
        ));
        support::transform(&mut buf[..n]);
        STATS.calls.add(1);
        if let Err(e) = stream.write_all(&buf[..n]) {
            trace!("{peer}: {e}; closing");
            return;
        }
        STATS.bytes_out.add(n as u64);
    }
    trace!("{peer}: closed");
}
// ANCHOR_END: handle_client
