//! `bench syscalls`: how often each model asks the kernel, counted from outside by strace.
//!
//! Every model serves the same fixed session: `--idle` silent connections held open, and
//! `--clients` clients each making `--round-trips` lockstep round trips of `--size` bytes (send,
//! wait for the whole reply, send the next). The server runs under `strace -f -c`, which counts
//! every system call of every thread. The session is run twice, once with no round trips at
//! all: the difference is what the round trips cost, without start-up, accepts and exit.
//!
//! Beside strace's count stands the server's own: the accept/read/write calls and wake-ups its
//! summary line reports (io_uring: its `io_uring_enter` calls). They should agree with strace's
//! count of those same calls; a difference beyond a small margin is flagged, never hidden.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::load::{PATIENCE, open_idle, server_binary};
use crate::table::{json_number, json_string, markdown, sig3, thousands};

/// The calls a server's own counters count: readiness waits, accept, read and write in their
/// various spellings, io_uring_enter, and the waits for a signal (sigio).
const COUNTED: &[&str] = &[
    "accept",
    "accept4",
    "read",
    "write",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "readv",
    "writev",
    "select",
    "pselect6",
    "poll",
    "ppoll",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "io_uring_enter",
    "rt_sigtimedwait",
    "rt_sigsuspend",
];

/// How far the server's own count may stray from strace's before it is flagged: 5%, and a
/// few calls for the stragglers (a final wake-up, the Ctrl-C read).
fn agrees(server: f64, strace: f64) -> bool {
    (server - strace).abs() <= 0.05 * server.max(strace) + 20.0
}

/// Every model (its name, a short one for the plot, the binary and its options), with the
/// options that let it hold the idle connections beside the active ones.
pub const MODELS: &[(&str, &str, &str, &str)] = &[
    ("blocking (thread)", "thread", "blocking", "--mode thread"),
    (
        "blocking (pool)",
        "pool",
        "blocking",
        "--mode pool --workers 128",
    ),
    ("nonblocking", "nonblock", "nonblocking", ""),
    ("select", "select", "select", ""),
    ("poll", "poll", "poll", ""),
    ("epoll", "epoll", "epoll", ""),
    ("epoll (edge)", "edge", "epoll", "--edge"),
    ("sigio", "sigio", "sigio", ""),
    ("aio (io_uring)", "uring", "aio", "--backend uring"),
    (
        "aio (io_uring, SQPOLL)",
        "SQPOLL",
        "aio",
        "--backend uring --sqpoll",
    ),
    (
        "aio (POSIX AIO)",
        "POSIX",
        "aio",
        "--backend posix --threads 128",
    ),
];

#[derive(Clone, Debug, clap::Args)]
pub struct SyscallArgs {
    /// Only the models whose name contains this (e.g. "epoll", "SQPOLL").
    #[arg(long)]
    pub only: Option<String>,
    /// Clients making round trips at once.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Lockstep round trips per client.
    #[arg(long, default_value_t = 2_000)]
    pub round_trips: usize,
    /// Bytes per round trip.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Silent connections held open beside them.
    #[arg(long, default_value_t = 100)]
    pub idle: usize,
    /// Directory holding the server binaries (default: the one holding this program).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl SyscallArgs {
    /// The defaults, as `bench report` runs them.
    pub fn for_report(bin_dir: Option<PathBuf>) -> SyscallArgs {
        let (clients, round_trips, size, idle) = (4, 2_000, 64, 100);
        SyscallArgs {
            only: None,
            clients,
            round_trips,
            size,
            idle,
            bin_dir,
            json: false,
        }
    }
}

/// What one model's session cost, beyond the same session without round trips.
#[derive(Clone, Debug)]
pub struct Count {
    pub label: String,
    pub short: String,
    pub server: String,
    pub args: String,
    pub round_trips: u64,
    /// System calls by name, as strace counted them (all threads).
    pub calls: BTreeMap<String, i64>,
    /// The server's own count, and strace's count of the calls it counts.
    pub server_count: i64,
    pub strace_count: i64,
}

impl Count {
    pub fn total(&self) -> i64 {
        self.calls.values().sum()
    }

    pub fn per_round_trip(&self) -> f64 {
        self.total() as f64 / self.round_trips.max(1) as f64
    }

    pub fn agrees(&self) -> bool {
        agrees(self.server_count as f64, self.strace_count as f64)
    }

    /// The `n` most frequent calls, per round trip: "read 1.0, write 1.0".
    pub fn top(&self, n: usize) -> String {
        let mut calls: Vec<_> = self.calls.iter().filter(|(_, c)| **c > 0).collect();
        calls.sort_by_key(|(name, c)| (-**c, name.to_string()));
        let per = |c: i64| sig3(c as f64 / self.round_trips.max(1) as f64);
        let top: Vec<String> = calls
            .iter()
            .take(n)
            .map(|(k, c)| format!("{k} {}", per(**c)))
            .collect();
        top.join(", ")
    }

    pub fn to_json(&self) -> String {
        let calls: Vec<String> = self
            .calls
            .iter()
            .map(|(k, v)| format!("{}: {v}", json_string(k)))
            .collect();
        format!(
            "{{\"server\": {}, \"args\": {}, \"label\": {}, \"round_trips\": {}, \
             \"per_round_trip\": {}, \"calls\": {{{}}}, \"server_count\": {}, \
             \"strace_count\": {}, \"agrees\": {}}}",
            json_string(&self.server),
            json_string(&self.args),
            json_string(&self.label),
            self.round_trips,
            json_number(self.per_round_trip()),
            calls.join(", "),
            self.server_count,
            self.strace_count,
            self.agrees()
        )
    }
}

/// The table: one row per model.
pub fn table(counts: &[Count]) -> String {
    let rows: Vec<Vec<String>> = counts
        .iter()
        .map(|c| {
            let rt = c.round_trips.max(1) as f64;
            let own = format!(
                "{} vs {}{}",
                sig3(c.server_count as f64 / rt),
                sig3(c.strace_count as f64 / rt),
                if c.agrees() { "" } else { " **disagree**" }
            );
            vec![c.label.clone(), sig3(c.per_round_trip()), c.top(3), own]
        })
        .collect();
    let headers = [
        "server",
        "system calls per round trip",
        "the most frequent (per round trip)",
        "server's own count vs strace's",
    ];
    markdown(&headers, &rows)
}

pub fn main(args: &SyscallArgs) -> anyhow::Result<()> {
    let counts = run_all(args)?;
    if args.json {
        let items: Vec<String> = counts.iter().map(Count::to_json).collect();
        println!("[{}]", items.join(",\n "));
    } else {
        println!(
            "bench syscalls: {} clients x {} lockstep round trips of {} B, {} idle connections, \
             under strace -f -c (minus the same session without round trips)\n",
            args.clients,
            thousands(args.round_trips as u64),
            args.size,
            args.idle
        );
        print!("{}", table(&counts));
    }
    Ok(())
}

/// strace's path, or how to get it.
pub fn strace() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("strace"))
        .find(|p| p.is_file())
        .context("strace is not installed; on Debian or Ubuntu: apt-get install strace")
}

pub fn run_all(args: &SyscallArgs) -> anyhow::Result<Vec<Count>> {
    let strace = strace()?;
    conformance::raise_descriptor_limit();
    let mut counts = Vec::new();
    for &(label, short, server, server_args) in MODELS {
        if args
            .only
            .as_deref()
            .is_some_and(|only| !label.contains(only))
        {
            continue;
        }
        let bin = server_binary(server, args.bin_dir.as_deref())?;
        let base = session(&strace, &bin, server_args, args, 0)
            .with_context(|| format!("{label}, without round trips"))?;
        let full = session(&strace, &bin, server_args, args, args.round_trips)
            .with_context(|| format!("{label}, with round trips"))?;
        let mut calls = full.calls;
        for (name, n) in base.calls {
            *calls.entry(name).or_default() -= n;
        }
        // A call made a few times more in the run without round trips is noise, not a saving.
        calls.retain(|_, n| *n > 0);
        let strace_count = COUNTED
            .iter()
            .map(|c| calls.get(*c).copied().unwrap_or(0))
            .sum();
        counts.push(Count {
            label: label.to_owned(),
            short: short.to_owned(),
            server: server.to_owned(),
            args: server_args.to_owned(),
            round_trips: (args.clients * args.round_trips) as u64,
            calls,
            server_count: (full.server_count - base.server_count).max(0),
            strace_count,
        });
    }
    Ok(counts)
}

/// One session under strace: its calls by name, and the server's own count.
struct Session {
    calls: BTreeMap<String, i64>,
    server_count: i64,
}

fn session(
    strace: &Path,
    bin: &Path,
    server_args: &str,
    args: &SyscallArgs,
    round_trips: usize,
) -> anyhow::Result<Session> {
    let out = std::env::temp_dir().join(format!("bench-syscalls-{}.txt", std::process::id()));
    let out_arg = out.to_string_lossy().into_owned();
    let bin_arg = bin.to_string_lossy().into_owned();
    let mut argv = vec!["-f", "-c", "-o", &out_arg, &bin_arg];
    argv.extend(server_args.split_whitespace());
    let mut cmd = std::process::Command::new(strace);
    cmd.args(&argv);
    let server = conformance::Server::launch(cmd, None, PATIENCE).map_err(|e| anyhow!("{e}"))?;
    let traced = traced_child(server.pid().as_raw())?;
    let idle = open_idle(server.addr, args.idle)?;
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            let (addr, size) = (server.addr, args.size);
            thread::spawn(move || lockstep(addr, i, size, round_trips))
        })
        .collect();
    for c in clients {
        c.join().expect("a client thread panicked")?;
    }
    drop(idle);
    // Ctrl-C to the server itself: strace, given a program and -o, blocks SIGINT (strace -I).
    kill(Pid::from_raw(traced), Signal::SIGINT).context("kill -INT")?;
    // strace ignores this SIGINT (see above) and exits when the server has.
    let stopped = server.stop(Signal::SIGINT, PATIENCE);
    if stopped.killed {
        bail!("the server did not exit within {PATIENCE:?} of SIGINT");
    }
    let summary = conformance::summary_line(&stopped.stderr).unwrap_or_default();
    let text = std::fs::read_to_string(&out).context("strace's output")?;
    let _ = std::fs::remove_file(&out);
    Ok(Session {
        calls: parse_strace_c(&text),
        server_count: own_count(&summary),
    })
}

/// The server strace started: its only child.
fn traced_child(strace: i32) -> anyhow::Result<i32> {
    let path = format!("/proc/{strace}/task/{strace}/children");
    let children = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let first = children
        .split_whitespace()
        .next()
        .context("strace has no child")?;
    Ok(first.parse()?)
}

/// One client: `rounds` round trips of `size` bytes, each reply checked.
fn lockstep(addr: SocketAddr, id: usize, size: usize, rounds: usize) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).context("connect")?;
    stream.set_nodelay(true)?;
    let mut reply = vec![0u8; size];
    for round in 0..rounds {
        let request: Vec<u8> = (0..size)
            .map(|i| b'a' + ((i + id + round) % 26) as u8)
            .collect();
        stream.write_all(&request).context("write")?;
        stream.read_exact(&mut reply).context("read")?;
        if reply != request.to_ascii_uppercase() {
            bail!("client {id}, round {round}: wrong reply");
        }
    }
    Ok(())
}

/// The table `strace -c` writes: `% time seconds usecs/call calls [errors] syscall`, between
/// dashed lines, then a `total` row (skipped).
pub fn parse_strace_c(text: &str) -> BTreeMap<String, i64> {
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(n)) = (fields.last(), fields.get(3)) else {
            continue;
        };
        if fields.len() < 5 || *name == "total" {
            continue;
        }
        if let Ok(n) = n.parse::<i64>() {
            *calls.entry((*name).to_owned()).or_default() += n;
        }
    }
    calls
}

/// The server's own count from its summary line: its `io_uring_enter calls` if it has them,
/// else its wake-ups (readiness waits) plus its accept/read/write calls. A count of one may be
/// written in the singular (`1 wake-up`).
pub fn own_count(summary: &str) -> i64 {
    let field = |name| summary_field(summary, name);
    field(" io_uring_enter call")
        .unwrap_or_else(|| field(" wake-up").unwrap_or(0) + field(" call").unwrap_or(0))
}

/// The number before ` name` (singular, with its leading space) or its plural in a server's
/// summary line (`…, 1736 io_uring_enter calls, …`), if the summary has that count.
pub fn summary_field(summary: &str, name: &str) -> Option<i64> {
    summary.split(", ").find_map(|part| {
        let part = part.strip_suffix('s').unwrap_or(part);
        part.strip_suffix(name)?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_tables_parse() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.000600           3       200           read
 40.00    0.000400           2       201        12 epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000           2       401        12 total
";
        let calls = parse_strace_c(text);
        assert_eq!(calls.get("read"), Some(&200));
        assert_eq!(calls.get("epoll_wait"), Some(&201));
        assert_eq!(calls.len(), 2);
    }

    #[test]
    fn counts_are_read_from_a_summary() {
        let summary = "aio: summary: 51 connections, 600596 submissions, 61316 io_uring_enter \
                       calls, 0 SQ thread wake-ups";
        assert_eq!(summary_field(summary, " io_uring_enter call"), Some(61316));
        assert_eq!(summary_field(summary, " SQ thread wake-up"), Some(0));
        assert_eq!(summary_field(summary, " call"), None); // not a count of its own
        let one = "aio: summary: 1 connection, 1 io_uring_enter call";
        assert_eq!(summary_field(one, " io_uring_enter call"), Some(1));
        let epoll = "epoll: summary: 3 connections";
        assert_eq!(summary_field(epoll, " io_uring_enter call"), None);
    }

    #[test]
    fn own_counts_parse() {
        let s = "3 connections, 1 KiB in, 1 KiB out, 40 wake-ups, 95 calls, 12 would-block (12.6%)";
        assert_eq!(own_count(s), 135);
        let s = "1 connections, 12 B in, 12 B out, 8 wake-ups, 0 calls, 0 would-block (0.0%), \
                 9 submissions, 10 completions, 9 io_uring_enter calls";
        assert_eq!(own_count(s), 9);
        let s = "1 connection, 2 B in, 2 B out, 1 wake-up, 1 call, 0 would-block (0.0%)";
        assert_eq!(own_count(s), 2);
    }

    #[test]
    fn margins() {
        assert!(agrees(1000.0, 1030.0));
        assert!(!agrees(1000.0, 2000.0));
    }
}
