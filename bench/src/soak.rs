//! `bench soak`: every server under adversarial clients, for a bounded time, and what it holds
//! before and after.
//!
//! For each server (all of them, in every mode, unless `--server` names some), the release
//! binary is started on port 0 and `--clients` client threads run against it for `--seconds`,
//! each picking at random, one connection after another:
//!
//! - **echo**: sends 1 B to 1 MiB of random bytes (binary, mixed case) in random chunks with
//!   random pauses, reads at the same time, and checks every byte of the reply; then either
//!   half-closes and expects end-of-file right after the last byte, or simply closes.
//! - **slow reader**: the same, but stops reading for up to two seconds, twice, while it keeps
//!   sending: the server must hold back (back-pressure) and serve the others meanwhile.
//! - **half-close, never read**: sends, half-closes, and closes without reading a byte.
//! - **reset**: sends part of its data, then closes with `SO_LINGER` 0: a reset mid-stream.
//!
//! Every reply of the first two kinds is verified byte-exact; a reply that stops for
//! [`STALL`] is a stall. Before the first client and after the last, the server's open
//! descriptors, RSS, threads and child processes are read from `/proc`; at the end it is
//! stopped with SIGINT and must exit 0 with its summary. One line per server; the exit status
//! is non-zero if any reply was wrong or stalled, or a server crashed or leaked descriptors.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::bail;

use conformance::harness::status_field;
use conformance::{Rng, Server};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::load::server_binary;
use crate::table::thousands;

/// A verified reply that makes no progress for this long is a stall.
const STALL: Duration = Duration::from_secs(20);

/// How long a server may take to announce itself, or to exit after SIGINT.
const PATIENCE: Duration = Duration::from_secs(20);

/// The largest message a client sends.
const MAX_SIZE: usize = 1 << 20;

/// Every server and mode, as `name args...`: what `bench soak` runs without `--server`.
pub const ALL: &[&str] = &[
    "blocking --mode thread",
    "blocking --mode pool",
    "blocking --mode fork",
    "nonblocking",
    "select",
    "poll",
    "epoll",
    "epoll --edge",
    "sigio",
    "aio --backend uring",
    "aio --backend posix --threads 4",
    "selectors-chat --echo",
    "reactor",
    "reactor --workers 4 --loops 2",
];

#[derive(Clone, Debug, clap::Args)]
pub struct SoakArgs {
    /// A server and its arguments, e.g. "epoll --edge" (repeat for several; default: every
    /// server in every mode).
    #[arg(long)]
    pub server: Vec<String>,
    /// Seconds of soak per server.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Client threads at once, each running one connection after another.
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Seed of the random choices (default: from the clock); printed, to replay a run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Directory holding the server binaries (default: the one holding this program).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

pub fn main(args: &SoakArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.seconds <= 0.0 {
        bail!("--clients and --seconds must be positive");
    }
    if cfg!(debug_assertions) {
        eprintln!("bench: warning: this is a debug build; soak with --release");
    }
    conformance::raise_descriptor_limit();
    let seed = args.seed.unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "bench soak: seed {seed}, {} client threads, {} s per server",
        args.clients, args.seconds
    );
    let servers: Vec<String> = if args.server.is_empty() {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        args.server.clone()
    };
    let mut bad = Vec::new();
    for spec in &servers {
        let report = soak_one(spec, args, seed)?;
        println!("{}", report.line());
        if !report.problems.is_empty() {
            for problem in report.problems.iter().take(5) {
                println!("    {problem}");
            }
            bad.push(spec.as_str());
        }
    }
    if !bad.is_empty() {
        bail!("trouble with: {}", bad.join(", "));
    }
    Ok(())
}

/// What the server holds, from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct Holdings {
    fds: usize,
    rss_kib: u64,
    threads: u64,
    children: usize,
}

fn holdings(pid: i32) -> Holdings {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map_or(0, |s| s.split_whitespace().count());
    Holdings {
        fds,
        rss_kib: status_field(Pid::from_raw(pid), "VmRSS").unwrap_or(0),
        threads: status_field(Pid::from_raw(pid), "Threads").unwrap_or(0),
        children,
    }
}

/// Has the server died (a zombie, or gone)? Then nothing more is worth trying.
fn dead(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let state = status.lines().find_map(|l| l.strip_prefix("State:"));
    state.is_none_or(|s| s.trim_start().starts_with('Z'))
}

/// What the server holds once it has stopped changing (two readings 300 ms apart agree), or
/// after 5 s.
fn steady(pid: i32) -> Holdings {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = holdings(pid);
    loop {
        thread::sleep(Duration::from_millis(300));
        let now = holdings(pid);
        let same = (now.fds, now.threads, now.children) == (last.fds, last.threads, last.children);
        if same || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Waits up to 10 s for the server to let go of what its clients made it hold: descriptors,
/// helper threads (glibc's AIO helpers linger a second) and child processes.
fn settle(pid: i32, baseline: Holdings) -> Holdings {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = holdings(pid);
        let done = now.fds <= baseline.fds
            && now.threads <= baseline.threads
            && now.children <= baseline.children;
        if done || Instant::now() > deadline {
            return now;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Default)]
struct Tally {
    echo: u64,
    slow: u64,
    unread: u64,
    reset: u64,
    /// Connections closed before any reply: refused at a limit, if the server said so.
    refused: u64,
    /// Bytes of replies verified.
    verified: u64,
    problems: Vec<String>,
}

struct Report {
    spec: String,
    secs: f64,
    tally: Tally,
    before: Holdings,
    after: Holdings,
    exit: String,
    problems: Vec<String>,
}

impl Report {
    fn line(&self) -> String {
        let t = &self.tally;
        let (b, a) = (self.before, self.after);
        let mib = |kib: u64| kib as f64 / 1024.0;
        let verdict = if self.problems.is_empty() {
            "ok"
        } else {
            "FAILED"
        };
        format!(
            "{:<24} {verdict}: {:.0} s, {} connections ({} echo, {} slow readers, {} half-closed \
             unread, {} reset; {} refused at a limit), {:.1} MiB verified, {} problems; fds {} -> \
             {}, RSS {:.1} -> {:.1} MiB, threads {} -> {}, children {} -> {}; {}",
            self.spec,
            self.secs,
            thousands(t.echo + t.slow + t.unread + t.reset + t.refused),
            t.echo,
            t.slow,
            t.unread,
            t.reset,
            t.refused,
            t.verified as f64 / 1048576.0,
            self.problems.len(),
            b.fds,
            a.fds,
            mib(b.rss_kib),
            mib(a.rss_kib),
            b.threads,
            a.threads,
            b.children,
            a.children,
            self.exit
        )
    }
}

fn soak_one(spec: &str, args: &SoakArgs, seed: u64) -> anyhow::Result<Report> {
    let mut words = spec.split_whitespace();
    let name = words.next().unwrap_or_default();
    let server_args: Vec<&str> = words.collect();
    let bin = server_binary(name, args.bin_dir.as_deref())?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(&server_args).arg("127.0.0.1:0");
    let server = Server::launch(cmd, None, PATIENCE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (pid, addr) = (server.pid().as_raw(), server.addr);
    // One round trip first, so that what the first client allocates counts as the baseline;
    // it ends with the server's end-of-file, and the server is then left to tidy up.
    let mut rng = Rng::new(seed ^ hash(spec));
    let mut tally = Tally::default();
    if let Err(e) = first_round_trip(addr) {
        tally.problems.push(format!("first round trip: {e}"));
    }
    let before = steady(pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let shared = Mutex::new(tally);
    thread::scope(|s| {
        for i in 0..args.clients {
            let shared = &shared;
            let mut rng = Rng::new(rng.next_u64() ^ i as u64);
            s.spawn(move || {
                while Instant::now() < deadline && !dead(pid) {
                    let outcome = client(addr, &mut rng);
                    let mut t = shared.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        (kind, Ok(verified)) => {
                            t.verified += verified;
                            *kind.count(&mut t) += 1;
                        }
                        (_, Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            t.refused += 1;
                        }
                        (kind, Err(e)) => {
                            *kind.count(&mut t) += 1;
                            t.problems.push(format!("{}: {e}", kind.name()));
                        }
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let tally = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    let after = settle(pid, before);
    let mut problems = tally.problems.clone();
    let announced = server.stderr().matches("refusing").count() as u64;
    if tally.refused > announced {
        let silent = tally.refused - announced;
        problems.push(format!(
            "{silent} connections closed before any reply, unannounced"
        ));
    }
    if after.fds > before.fds {
        problems.push(format!("{} descriptors left open", after.fds - before.fds));
    }
    if after.children > before.children {
        problems.push(format!("{} child processes left", after.children));
    }
    let stopped = server.stop(Signal::SIGINT, PATIENCE);
    let exit = if stopped.status.success() && !stopped.killed {
        "stopped cleanly".to_owned()
    } else {
        let how = if stopped.killed {
            "killed: no exit after SIGINT".to_owned()
        } else {
            format!("exited with {}", stopped.status)
        };
        problems.push(format!("{how}; it said: {}", stopped.stderr.trim()));
        how
    };
    Ok(Report {
        spec: spec.to_owned(),
        secs,
        tally,
        before,
        after,
        exit,
        problems,
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Echo,
    SlowReader,
    HalfCloseUnread,
    Reset,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::SlowReader => "slow reader",
            Kind::HalfCloseUnread => "half-close unread",
            Kind::Reset => "reset",
        }
    }

    fn count(self, t: &mut Tally) -> &mut u64 {
        match self {
            Kind::Echo => &mut t.echo,
            Kind::SlowReader => &mut t.slow,
            Kind::HalfCloseUnread => &mut t.unread,
            Kind::Reset => &mut t.reset,
        }
    }
}

/// One connection of a randomly chosen kind; Ok(bytes verified) or what went wrong.
fn client(addr: SocketAddr, rng: &mut Rng) -> (Kind, io::Result<u64>) {
    let size = message_size(rng);
    match rng.below(8) {
        0..=3 => (Kind::Echo, echo(addr, rng, size, false)),
        4 | 5 => (Kind::SlowReader, echo(addr, rng, size, true)),
        6 => (Kind::HalfCloseUnread, half_close_unread(addr, rng, size)),
        _ => (Kind::Reset, reset(addr, rng, size)),
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(STALL))?;
    stream.set_write_timeout(Some(STALL))?;
    Ok(stream)
}

/// A plain round trip: a line, a half-close, the reply, then the server's end-of-file.
fn first_round_trip(addr: SocketAddr) -> io::Result<()> {
    let mut stream = connect(addr)?;
    stream.write_all(b"soak: first round trip\n")?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    if reply != b"SOAK: FIRST ROUND TRIP\n" {
        return Err(io::Error::other(format!("wrong reply {reply:?}")));
    }
    Ok(())
}

/// Sends `size` random bytes in random chunks while a second thread reads and checks the reply.
fn echo(addr: SocketAddr, rng: &mut Rng, size: usize, slow: bool) -> io::Result<u64> {
    let stream = connect(addr)?;
    let data = rng.bytes(size);
    let expected = data.to_ascii_uppercase();
    let half_close = rng.below(2) == 0;
    let mut writer_rng = Rng::new(rng.next_u64());
    // A slow reader stops reading twice, at random points of the reply, for up to 2 s each.
    let mut pauses: Vec<usize> = if slow {
        vec![rng.below(size), rng.below(size)]
    } else {
        Vec::new()
    };
    pauses.sort_unstable_by(|a, b| b.cmp(a));
    let mut reader = stream.try_clone()?;
    let mut reader_rng = Rng::new(rng.next_u64());
    thread::scope(|s| {
        let sent = s.spawn(|| -> io::Result<()> {
            send_chunked(&stream, &data, &mut writer_rng)?;
            if half_close {
                stream.shutdown(Shutdown::Write)?;
            }
            Ok(())
        });
        let got = (|| -> io::Result<()> {
            let mut buf = vec![0u8; 65536];
            let mut received = 0;
            while received < expected.len() {
                while pauses.last().is_some_and(|&at| at <= received) {
                    pauses.pop();
                    thread::sleep(Duration::from_millis(reader_rng.below(2000) as u64));
                }
                let n = match reader.read(&mut buf) {
                    Ok(0) if received == 0 => return Err(refused()),
                    Err(e) if received == 0 && closed(&e) => return Err(refused()),
                    Ok(0) => {
                        return Err(io::Error::other(format!(
                            "end-of-file after {received} of {} bytes",
                            expected.len()
                        )));
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Err(io::Error::other(format!(
                            "stalled: nothing for {} s after {received} of {} bytes",
                            STALL.as_secs(),
                            expected.len()
                        )));
                    }
                    Err(e) => {
                        return Err(io::Error::other(format!(
                            "{e} after {received} of {} bytes",
                            expected.len()
                        )));
                    }
                };
                if n > expected.len() - received {
                    return Err(io::Error::other(format!(
                        "{} bytes more than were sent",
                        n - (expected.len() - received)
                    )));
                }
                if buf[..n] != expected[received..received + n] {
                    let at = buf[..n]
                        .iter()
                        .zip(&expected[received..])
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    return Err(io::Error::other(format!(
                        "wrong byte at {} of {}",
                        received + at,
                        expected.len()
                    )));
                }
                received += n;
            }
            if half_close {
                // Everything came back: the server must now close too.
                match reader.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        return Err(io::Error::other(format!("{n} bytes more than were sent")));
                    }
                    Err(e) => {
                        return Err(io::Error::other(format!(
                            "no end-of-file after the reply: {e}"
                        )));
                    }
                }
            }
            Ok(())
        })();
        if got.is_err() {
            // Unblock the writer, which may be waiting for room the server will never make.
            let _ = stream.shutdown(Shutdown::Both);
        }
        let sent = sent
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("writer panicked")));
        got?;
        sent.map_err(|e| io::Error::other(format!("send: {e}")))
    })?;
    Ok(size as u64)
}

/// A server at its limit (blocking's --max-clients, aio's --threads) closes a newcomer before
/// answering it: counted apart, and checked against the refusals the server announced.
fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, "closed before any reply")
}

/// The server closed the connection (end-of-file, reset, broken pipe).
fn closed(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted
    )
}

/// Writes `data` in chunks of 1 B to 64 KiB, now and then pausing up to 20 ms.
fn send_chunked(mut stream: &TcpStream, data: &[u8], rng: &mut Rng) -> io::Result<()> {
    let mut sent = 0;
    while sent < data.len() {
        let bits = rng.below(17);
        let chunk = (1 + rng.below(1 << bits)).min(data.len() - sent);
        stream.write_all(&data[sent..sent + chunk])?;
        sent += chunk;
        if rng.below(16) == 0 {
            thread::sleep(Duration::from_millis(rng.below(20) as u64));
        }
    }
    Ok(())
}

/// Sends, half-closes, and goes away without reading the reply.
fn half_close_unread(addr: SocketAddr, rng: &mut Rng, size: usize) -> io::Result<u64> {
    let stream = connect(addr)?;
    // At most what the two kernels' buffers take without the server's reply being read, so
    // that the write cannot wait for ever on a server that rightly stops reading.
    let data = rng.bytes(size.min(64 * 1024));
    send_chunked(&stream, &data, rng).map_err(|e| if closed(&e) { refused() } else { e })?;
    stream.shutdown(Shutdown::Write)?;
    thread::sleep(Duration::from_millis(rng.below(200) as u64));
    Ok(0)
}

/// Sends part of its data, perhaps reads a little, then resets the connection.
fn reset(addr: SocketAddr, rng: &mut Rng, size: usize) -> io::Result<u64> {
    let mut stream = connect(addr)?;
    let data = rng.bytes(size.min(64 * 1024));
    let part = rng.below(data.len() + 1);
    let refused_if_closed = |e: io::Error| if closed(&e) { refused() } else { e };
    send_chunked(&stream, &data[..part], rng).map_err(refused_if_closed)?;
    if part > 0 && rng.below(2) == 0 {
        let mut buf = [0u8; 1];
        stream.read_exact(&mut buf).map_err(refused_if_closed)?;
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger)?;
    Ok(0)
}

/// A message size from 1 B to 1 MiB, spread evenly over the powers of two.
fn message_size(rng: &mut Rng) -> usize {
    let bits = rng.below(21);
    (1 + rng.below(1 << bits)).min(MAX_SIZE)
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
