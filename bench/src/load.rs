//! `bench load`: one server under a closed-loop load, with idle connections held beside it.
//!
//! The server is one of three: the release binary beside this program (`--server NAME`, i.e.
//! `target/release/NAME`, started on `127.0.0.1:0`; its `listening on IP:PORT` line tells us
//! where to connect); any command (`--spawn CMD`, with `{port}` replaced by a free port, as the
//! checker does); or a server already running (`--addr ADDR`, with `--pid PID` if its CPU and
//! memory should be read too). Then:
//!
//! 1. `--idle` connections are opened and each is checked to be accepted; they then sit silent.
//!    They are what select and poll pay for on every call, and what a thread per connection pays
//!    for in memory.
//! 2. The server's CPU share is measured while every connection is silent (`--idle-secs`):
//!    ~0 for a server that sleeps in the kernel, a whole core for a busy loop.
//! 3. `--conns` active connections each do closed-loop round trips (send `--size` bytes of
//!    mixed-case text, wait for all of them to come back upper-cased, check them, send the next)
//!    for `--secs` seconds. Every reply is verified, and its latency recorded.
//! 4. The server's CPU time, RSS and thread count are read from `/proc/PID/stat` and `status`.
//!
//! The load generator must not be the bottleneck. It is a few threads (`--threads`, default 1),
//! each driving its share of the active connections with level-triggered epoll: one thread
//! handles hundreds of connections at a few µs per round trip, and leaves the second core to
//! the server. Its own CPU share is printed: near 100% means the numbers measure the generator.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use conformance::harness::{
    clock_ticks, cpu_share, parse_stat_cpu, process_cpu_seconds, status_field,
};
use conformance::{Server, json_string, summary_line};
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::table::{json_number, sig3, thousands};

/// How long a server may take to announce itself, or to exit after SIGINT.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Idle connections are opened in batches of this many; after each batch one round trip on its
/// last connection proves the server has accepted the whole batch (accept takes connections
/// from the queue in order), so the listen queue never overflows and every idle connection is
/// really held by the server when we measure.
const BATCH: usize = 100;

#[derive(Clone, Debug, clap::Args)]
pub struct LoadArgs {
    /// The server binary to start (blocking, nonblocking, select, poll, epoll, sigio, aio).
    #[arg(long, conflicts_with_all = ["addr", "spawn"])]
    pub server: Option<String>,
    /// Extra arguments for the server, split at spaces (e.g. "--mode thread").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub server_args: String,
    /// Start any server with CMD instead: split into words like a shell (none is run), `{port}`
    /// replaced by a free port, stopped with SIGINT at the end.
    #[arg(long, value_name = "CMD", conflicts_with = "addr")]
    pub spawn: Option<String>,
    /// Measure a server that is already running at ADDR.
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<SocketAddr>,
    /// The process id of the server at --addr, to read its CPU and memory from /proc.
    #[arg(long, value_name = "PID")]
    pub pid: Option<i32>,
    /// Active connections doing round trips.
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Idle connections held open beside them.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Bytes per round trip.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds to measure the server's CPU while every connection is silent (0 to skip).
    #[arg(long, default_value_t = 1.0)]
    pub idle_secs: f64,
    /// Load-generator threads (each drives its share of the active connections with epoll).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Directory holding the server binaries (default: the one holding this program).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Print JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub server: String,
    pub server_args: String,
    pub conns: usize,
    pub idle: usize,
    pub size: usize,
    /// Seconds the load actually ran.
    pub secs: f64,
    pub round_trips: u64,
    pub round_trips_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Server CPU seconds (user + system) during the load.
    pub server_cpu_s: f64,
    /// The same as a share of one core.
    pub server_cpu_share: f64,
    /// Of `server_cpu_s`, what io_uring's SQ polling thread (`iou-sqp-PID`, --sqpoll) used.
    pub sq_thread_cpu_s: f64,
    /// Share of one core the server used while all connections were silent (NaN if skipped).
    pub idle_cpu_share: f64,
    /// Server RSS right after it announced itself, before any connection.
    pub rss_start_kib: u64,
    /// Server RSS with every connection open, at the end of the load.
    pub server_rss_kib: u64,
    pub server_threads: u64,
    /// Whether the server's process was known, so that its CPU, RSS and threads were read
    /// (not for `--addr` without `--pid`: those fields are then null in the JSON).
    pub process_known: bool,
    /// Generator CPU seconds during the load, and as a share of one core.
    pub client_cpu_s: f64,
    pub client_cpu_share: f64,
    pub client_threads: usize,
    /// The server's summary line, printed on stderr when it stopped.
    pub summary: String,
}

impl LoadResult {
    /// (RSS with all connections − RSS at start) / connections: what one connection costs.
    pub fn rss_per_conn_kib(&self) -> f64 {
        if !self.process_known {
            return f64::NAN;
        }
        let conns = (self.conns + self.idle).max(1) as f64;
        self.server_rss_kib.saturating_sub(self.rss_start_kib) as f64 / conns
    }

    /// A run as `to_json` wrote it (`bench report --replot` reads them back).
    pub fn from_json(v: &crate::json::Value) -> anyhow::Result<LoadResult> {
        use crate::json::Fields;
        let count = |key: &str| v.num(key).map(|x| x as u64);
        Ok(LoadResult {
            server: v.str("server")?.to_owned(),
            server_args: v.str("server_args")?.to_owned(),
            conns: count("conns")? as usize,
            idle: count("idle")? as usize,
            size: count("size")? as usize,
            secs: v.num("secs")?,
            round_trips: count("round_trips")?,
            round_trips_per_sec: v.num("round_trips_per_sec")?,
            p50_us: v.num("p50_us")?,
            p99_us: v.num("p99_us")?,
            max_us: v.num("max_us")?,
            server_cpu_s: v.num("server_cpu_s")?,
            server_cpu_share: v.num("server_cpu_share")?,
            // Absent from runs written before it was measured.
            sq_thread_cpu_s: v.num("sq_thread_cpu_s").unwrap_or(0.0),
            idle_cpu_share: v.num("idle_cpu_share")?,
            rss_start_kib: count("rss_start_kib")?,
            server_rss_kib: count("server_rss_kib")?,
            server_threads: count("server_threads")?,
            // Written as null when the server's process was not known (`--addr` alone).
            process_known: !v.field("server_rss_kib")?.is_null(),
            client_cpu_s: v.num("client_cpu_s")?,
            client_cpu_share: v.num("client_cpu_share")?,
            client_threads: count("client_threads")? as usize,
            summary: v.str("server_summary")?.to_owned(),
        })
    }

    /// CPU µs per round trip of the server's own threads (the SQ polling thread apart).
    pub fn cpu_us_per_round_trip(&self) -> f64 {
        (self.server_cpu_s - self.sq_thread_cpu_s) * 1e6 / self.round_trips.max(1) as f64
    }

    pub fn to_json(&self) -> String {
        let fields = [
            ("server", json_string(&self.server)),
            ("server_args", json_string(&self.server_args)),
            ("conns", self.conns.to_string()),
            ("idle", self.idle.to_string()),
            ("size", self.size.to_string()),
            ("secs", json_number(self.secs)),
            ("round_trips", self.round_trips.to_string()),
            ("round_trips_per_sec", json_number(self.round_trips_per_sec)),
            ("p50_us", json_number(self.p50_us)),
            ("p99_us", json_number(self.p99_us)),
            ("max_us", json_number(self.max_us)),
            ("server_cpu_s", json_number(self.server_cpu_s)),
            ("server_cpu_share", json_number(self.server_cpu_share)),
            (
                "server_cpu_us_per_round_trip",
                json_number(self.cpu_us_per_round_trip()),
            ),
            ("sq_thread_cpu_s", json_number(self.sq_thread_cpu_s)),
            ("idle_cpu_share", json_number(self.idle_cpu_share)),
            ("rss_start_kib", self.known(self.rss_start_kib)),
            ("server_rss_kib", self.known(self.server_rss_kib)),
            ("rss_per_conn_kib", json_number(self.rss_per_conn_kib())),
            ("server_threads", self.known(self.server_threads)),
            ("client_cpu_s", json_number(self.client_cpu_s)),
            ("client_cpu_share", json_number(self.client_cpu_share)),
            ("client_threads", self.client_threads.to_string()),
            ("server_summary", json_string(&self.summary)),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        format!("{{{}}}", body.join(", "))
    }

    /// A count read from /proc, or null when the process was not known.
    fn known(&self, n: u64) -> String {
        if self.process_known {
            n.to_string()
        } else {
            "null".to_owned()
        }
    }

    pub fn to_text(&self) -> String {
        let args = if self.server_args.is_empty() {
            String::new()
        } else {
            format!(" {}", self.server_args)
        };
        let idle_cpu = if self.idle_cpu_share.is_finite() {
            format!(
                "; {}% of a core while every connection sat silent",
                sig3(self.idle_cpu_share * 100.0)
            )
        } else {
            String::new()
        };
        let mut out = format!(
            "bench load: {}{args}, {} active + {} idle connections, {}-byte round trips for {} s\n",
            self.server,
            self.conns,
            thousands(self.idle as u64),
            self.size,
            sig3(self.secs)
        );
        out += &format!(
            "  round trips/s    {} ({} round trips, every reply verified)\n",
            thousands(self.round_trips_per_sec.round() as u64),
            thousands(self.round_trips)
        );
        out += &format!(
            "  latency          p50 {} µs, p99 {} µs, max {} µs\n",
            sig3(self.p50_us),
            sig3(self.p99_us),
            sig3(self.max_us)
        );
        if self.process_known {
            out += &format!(
                "  server CPU       {} s under load ({}% of a core){idle_cpu}\n",
                sig3(self.server_cpu_s),
                sig3(self.server_cpu_share * 100.0)
            );
            let sq = match self.sq_thread_cpu_s {
                0.0 => String::new(),
                s => format!("; the SQ polling thread beside them: {} s", sig3(s)),
            };
            let per = sig3(self.cpu_us_per_round_trip());
            out += &format!("  server CPU/trip  {per} µs per round trip (its own threads){sq}\n");
            out += &format!(
                "  server memory    RSS {} KiB ({} KiB at start: {} KiB per connection)\n",
                thousands(self.server_rss_kib),
                thousands(self.rss_start_kib),
                sig3(self.rss_per_conn_kib())
            );
            out += &format!("  server threads   {}\n", self.server_threads);
        } else {
            out += "  server CPU, memory and threads: unknown (give --pid PID with --addr)\n";
        }
        out += &format!(
            "  generator CPU    {} s ({}% of a core, {} thread{}){}\n",
            sig3(self.client_cpu_s),
            sig3(self.client_cpu_share * 100.0),
            self.client_threads,
            if self.client_threads == 1 { "" } else { "s" },
            if self.client_cpu_share > 0.9 * self.client_threads as f64 {
                "  <- the generator may be the bottleneck; try --threads 2"
            } else {
                ""
            }
        );
        if !self.summary.is_empty() {
            out += &format!("  server said      {}\n", self.summary);
        }
        out
    }
}

pub fn main(args: &LoadArgs) -> anyhow::Result<()> {
    let result = run(args)?;
    if args.json {
        println!("{}", result.to_json());
    } else {
        print!("{}", result.to_text());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The server process.

/// The servers of the workspace, by binary name.
pub const SERVERS: &[&str] = &[
    "blocking",
    "nonblocking",
    "select",
    "poll",
    "epoll",
    "sigio",
    "aio",
    "selectors-chat",
    "reactor",
];

/// Where the server binaries are: `--bin-dir`, or the directory holding this program (cargo
/// puts every binary of the workspace in the same `target/<profile>/`).
pub fn server_binary(name: &str, bin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if !SERVERS.contains(&name) {
        bail!(
            "no server named {name:?}; the servers are {}",
            SERVERS.join(", ")
        );
    }
    let dir = match bin_dir {
        Some(dir) => dir.to_path_buf(),
        None => std::env::current_exe()
            .context("current_exe")?
            .parent()
            .context("the directory of this program")?
            .to_path_buf(),
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "no server binary {} (build the servers first: cargo build --release --workspace)",
            path.display()
        );
    }
    Ok(path)
}

/// The server under load, and what is known of it.
struct Measured {
    /// The process we started (`--server`, `--spawn`), stopped at the end.
    started: Option<Server>,
    addr: SocketAddr,
    /// The process whose CPU and memory are read (`--pid` with `--addr`, or the one started).
    pid: Option<Pid>,
    /// How the results name it.
    label: String,
}

/// Starts the server, or finds the one already running.
fn server(args: &LoadArgs) -> anyhow::Result<Measured> {
    if args.pid.is_some() && args.addr.is_none() {
        bail!("--pid goes with --addr: a server the bench starts is measured anyway");
    }
    if let Some(addr) = args.addr {
        TcpStream::connect(addr).with_context(|| format!("nothing is listening on {addr}"))?;
        let pid = args.pid.map(Pid::from_raw);
        if let Some(pid) = pid {
            status_field(pid, "VmRSS").with_context(|| format!("no process {pid} to measure"))?;
        }
        return Ok(Measured {
            started: None,
            addr,
            pid,
            label: addr.to_string(),
        });
    }
    let (started, label) = match (&args.spawn, &args.server) {
        (Some(cmd), _) => (
            Server::from_command_line(cmd, PATIENCE).map_err(|e| anyhow!("{e}"))?,
            cmd.clone(),
        ),
        (None, Some(name)) => {
            if name == "selectors-chat" && !args.server_args.contains("--echo") {
                bail!(
                    "selectors-chat is a chat room, not an echo server: add --server-args \"--echo\""
                );
            }
            let bin = server_binary(name, args.bin_dir.as_deref())?;
            let mut cmd = Command::new(&bin);
            cmd.args(with_room_for(args)?).arg("127.0.0.1:0");
            let server = Server::launch(cmd, None, PATIENCE).map_err(|e| anyhow!("{e}"))?;
            (server, name.clone())
        }
        (None, None) => bail!("name a server: --server NAME, --spawn CMD or --addr ADDR"),
    };
    Ok(Measured {
        addr: started.addr,
        pid: Some(started.pid()),
        started: Some(started),
        label,
    })
}

/// Stops a server we started with SIGINT and returns its `summary:` line. Our own servers must
/// stop cleanly; a spawned one (in any language) may end as it likes.
fn stop(server: Server, strict: bool) -> anyhow::Result<String> {
    let stopped = server.stop(Signal::SIGINT, PATIENCE);
    if stopped.killed {
        bail!("the server did not exit within {PATIENCE:?} of SIGINT");
    }
    if strict && !stopped.status.success() {
        bail!(
            "the server exited with {} after SIGINT; it said: {}",
            stopped.status,
            stopped.stderr
        );
    }
    Ok(summary_line(&stopped.stderr).unwrap_or_default())
}

/// CPU seconds of the process's io_uring SQ polling threads (named `iou-sqp-PID`; none without
/// --sqpoll). They are threads of the process, so `process_cpu_seconds` includes them.
pub fn sq_thread_cpu_seconds(pid: Pid) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    let sq = tasks.filter(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        comm.starts_with("iou-sqp")
    });
    sq.filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| parse_stat_cpu(&stat, clock_ticks()))
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The measurement.

pub fn run(args: &LoadArgs) -> anyhow::Result<LoadResult> {
    if args.conns == 0 || args.size == 0 || args.threads == 0 {
        bail!("--conns, --size and --threads must be at least 1");
    }
    if cfg!(debug_assertions) {
        eprintln!("bench: warning: this is a debug build; measure with --release");
    }
    let limit = conformance::raise_descriptor_limit() as usize;
    if args.idle + args.conns + 64 > limit {
        bail!(
            "{} connections need more descriptors than this process may open ({limit})",
            args.idle + args.conns
        );
    }
    let Measured {
        started: server,
        addr,
        pid,
        label,
    } = server(args)?;
    // CPU seconds and /proc/PID/status counts of the server, when its process is known.
    let cpu = || match pid {
        Some(pid) => process_cpu_seconds(pid).context("/proc/PID/stat"),
        None => Ok(f64::NAN),
    };
    let sq_cpu = || pid.map_or(0.0, sq_thread_cpu_seconds);
    let status = |name: &str| match pid {
        Some(pid) => status_field(pid, name).with_context(|| format!("{name} in /proc/PID/status")),
        None => Ok(0),
    };
    let rss_start_kib = status("VmRSS")?;
    // If anything below fails, say what the server said: it is usually the reason.
    // A few lines of it: a server that refused a hundred connections said so a hundred times.
    let with_stderr = |e: anyhow::Error| {
        let said = server.as_ref().map(Server::stderr).unwrap_or_default();
        let lines: Vec<&str> = said.trim().lines().collect();
        match lines.len() {
            0 => e,
            1..=3 => anyhow!("{e:#}; the server said: {}", lines.join("\n")),
            n => anyhow!(
                "{e:#}; the server said: {}\n(and {} more lines)",
                lines[..3].join("\n"),
                n - 3
            ),
        }
    };

    // 1. Idle connections, each proved accepted.
    let idle = open_idle(addr, args.idle).map_err(with_stderr)?;
    // The active connections are opened now too, so that the idle window sees every one.
    let mut active = (0..args.conns)
        .map(|i| Conn::open(addr, i, args.size))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(with_stderr)?;
    for c in &mut active {
        c.warm_up().map_err(with_stderr)?;
    }

    // 2. CPU while everything is silent.
    let idle_cpu_share = match pid {
        Some(pid) if args.idle_secs > 0.0 => {
            cpu_share(pid, Duration::from_secs_f64(args.idle_secs)).context("/proc/PID/stat")?
        }
        _ => f64::NAN,
    };

    // 3. The load.
    let threads = args.threads.min(args.conns);
    let mut shares: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, c) in active.into_iter().enumerate() {
        shares[i % threads].push(c);
    }
    let server_cpu_before = cpu()?;
    let sq_before = sq_cpu();
    let client_cpu_before = crate::own_cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.secs);
    let workers: Vec<_> = shares
        .into_iter()
        .map(|conns| thread::spawn(move || drive(conns, deadline)))
        .collect();
    let mut latencies: Vec<u64> = Vec::new();
    let mut failure = None;
    for w in workers {
        match w.join() {
            Ok(Ok(mut l)) => latencies.append(&mut l),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow!("a generator thread panicked")),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let client_cpu_s = crate::own_cpu_seconds() - client_cpu_before;
    let server_cpu_s = cpu()? - server_cpu_before;
    let sq_thread_cpu_s = sq_cpu() - sq_before;
    if let Some(e) = failure {
        return Err(with_stderr(e));
    }

    // 4. What the server holds with every connection still open.
    let server_rss_kib = status("VmRSS")?;
    let server_threads = status("Threads")?;
    // Stop the server before closing our ends: it then closes first, and the TIME_WAIT state
    // lands on its listening port rather than on our ephemeral ports.
    let summary = match server {
        Some(server) => stop(server, args.spawn.is_none())?,
        None => String::new(),
    };
    drop(idle);

    latencies.sort_unstable();
    let us = |p| percentile(&latencies, p).map_or(f64::NAN, |ns| ns as f64 / 1000.0);
    Ok(LoadResult {
        server: label,
        server_args: args.server_args.clone(),
        conns: args.conns,
        idle: args.idle,
        size: args.size,
        secs,
        round_trips: latencies.len() as u64,
        round_trips_per_sec: latencies.len() as f64 / secs,
        p50_us: us(50.0),
        p99_us: us(99.0),
        max_us: us(100.0),
        server_cpu_s,
        server_cpu_share: server_cpu_s / secs,
        sq_thread_cpu_s,
        idle_cpu_share,
        rss_start_kib,
        server_rss_kib,
        server_threads,
        client_cpu_s,
        client_cpu_share: client_cpu_s / secs,
        client_threads: threads,
        process_known: pid.is_some(),
        summary,
    })
}

/// The server's arguments, with room for every connection of the run, or one line that says
/// why there can be none. blocking serves one client at a time (`--mode single`), `--workers`
/// at once (`pool`, the default, 4 unless given) or `--max-clients` (`thread` and `fork`, 1000
/// unless given). That last is only a limit: raised here to what the run holds, unless the user
/// set it. The others are what the model is: the run stops before it starts, with advice,
/// rather than wait in vain for a reply or collect a refusal line per connection.
fn with_room_for(args: &LoadArgs) -> anyhow::Result<Vec<String>> {
    let mut server_args: Vec<String> = args
        .server_args
        .split_whitespace()
        .map(Into::into)
        .collect();
    if args.server.as_deref() != Some("blocking") {
        return Ok(server_args);
    }
    let value = |flag: &str| {
        server_args
            .iter()
            .skip_while(|a| *a != flag)
            .nth(1)
            .cloned()
    };
    let number = |flag: &str| value(flag).and_then(|n| n.parse::<usize>().ok());
    let needed = args.idle + args.conns;
    match value("--mode").as_deref().unwrap_or("pool") {
        "single" if needed > 1 => bail!(
            "blocking --mode single serves one client at a time, and this run holds {needed} \
             connections: use --mode thread, or --conns 1 --idle 0"
        ),
        "pool" => {
            let workers = number("--workers").unwrap_or(4);
            if needed > workers {
                bail!(
                    "blocking's pool serves {workers} clients at once (--workers), and this run \
                     holds {needed} connections: the rest would wait for a worker for ever; pass \
                     --server-args \"--workers {needed}\", or use --mode thread"
                );
            }
        }
        "thread" | "fork" => match number("--max-clients") {
            None => server_args.extend(["--max-clients".into(), needed.max(1000).to_string()]),
            Some(max) if max < needed => bail!(
                "blocking --max-clients {max} would refuse {} of the {needed} connections: raise \
                 it in --server-args, or ask for fewer",
                needed - max
            ),
            Some(_) => {}
        },
        _ => {}
    }
    Ok(server_args)
}

/// The `p`th percentile (0–100) of sorted values, by the nearest-rank method: the smallest value
/// with at least p% of all values at or below it. None for no values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Opens `n` connections that will stay silent, in batches, each batch proved accepted.
pub fn open_idle(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut idle = Vec::with_capacity(n);
    while idle.len() < n {
        let batch = BATCH.min(n - idle.len());
        for _ in 0..batch {
            let stream = TcpStream::connect(addr)
                .with_context(|| format!("connect idle connection #{}", idle.len() + 1))?;
            idle.push(stream);
        }
        let n = idle.len();
        let last = idle.last_mut().expect("a batch is never empty");
        last.set_read_timeout(Some(PATIENCE))?;
        last.write_all(b"ping")
            .and_then(|()| {
                let mut reply = [0u8; 4];
                last.read_exact(&mut reply)?;
                if &reply == b"PING" {
                    Ok(())
                } else {
                    Err(io::Error::other(format!("wrong reply {reply:?}")))
                }
            })
            .with_context(|| {
                format!("idle connection #{n} got no reply: did the server refuse it?")
            })?;
    }
    Ok(idle)
}

/// Mixed-case text with digits, punctuation and UTF-8, so that a server that upper-cases too
/// much, too little, or garbles bytes is caught by the check of every reply.
const TEXT: &[u8] =
    "The quick brown Fox jumps over 13 lazy DOGS; ünïcode ß stays, [brackets] too!\n".as_bytes();

/// One active connection in the closed loop: one request in flight at a time.
struct Conn {
    stream: TcpStream,
    id: usize,
    request: Vec<u8>,
    expected: Vec<u8>,
    /// Bytes of `request` written, and of the reply read, so far.
    sent: usize,
    reply: Vec<u8>,
    received: usize,
    started: Instant,
    round: usize,
    /// Whether write interest is registered (only while part of the request is unsent).
    wants_write: bool,
}

impl Conn {
    fn open(addr: SocketAddr, id: usize, size: usize) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).context("connect active connection")?;
        // Small requests must leave at once, not wait for Nagle's algorithm.
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            id,
            request: vec![0; size],
            expected: vec![0; size],
            sent: 0,
            reply: vec![0; size],
            received: 0,
            started: Instant::now(),
            round: 0,
            wants_write: false,
        })
    }

    /// Fills the next request: a different slice of TEXT each round.
    fn next_request(&mut self) {
        let start = (self.id * 7 + self.round * 11) % TEXT.len();
        for (i, b) in self.request.iter_mut().enumerate() {
            *b = TEXT[(start + i) % TEXT.len()];
        }
        self.expected.copy_from_slice(&self.request);
        self.expected.make_ascii_uppercase();
        self.round += 1;
        self.sent = 0;
        self.received = 0;
        self.started = Instant::now();
    }

    /// One blocking round trip before the clock starts: proves the connection is served.
    fn warm_up(&mut self) -> anyhow::Result<()> {
        self.next_request();
        self.stream.set_read_timeout(Some(PATIENCE))?;
        self.stream.write_all(&self.request)?;
        self.stream
            .read_exact(&mut self.reply)
            .map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => anyhow!(
                    "no reply within {} s to a warm-up round trip: the server is not serving this \
                 connection (does it serve one client at a time?)",
                    PATIENCE.as_secs()
                ),
                _ => anyhow!("warm-up round trip: {e}"),
            })?;
        self.verify()?;
        self.stream.set_nonblocking(true)?;
        Ok(())
    }

    fn verify(&self) -> anyhow::Result<()> {
        if self.reply != self.expected {
            let at = self
                .reply
                .iter()
                .zip(&self.expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            bail!(
                "connection {} round {}: wrong reply at byte {at}: got {:?}, want {:?}",
                self.id,
                self.round,
                String::from_utf8_lossy(&self.reply),
                String::from_utf8_lossy(&self.expected)
            );
        }
        Ok(())
    }

    /// Writes what the socket takes now.
    fn write_some(&mut self) -> anyhow::Result<()> {
        while self.sent < self.request.len() {
            match self.stream.write(&self.request[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context(format!("write on connection {}", self.id)),
            }
        }
        Ok(())
    }

    /// Reads what has arrived; Some(latency) when the whole reply is in and verified.
    fn read_some(&mut self) -> anyhow::Result<Option<Duration>> {
        while self.received < self.reply.len() {
            match self.stream.read(&mut self.reply[self.received..]) {
                Ok(0) => bail!("connection {}: the server closed it", self.id),
                Ok(n) => self.received += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context(format!("read on connection {}", self.id)),
            }
        }
        if self.sent < self.request.len() {
            bail!(
                "connection {}: a full reply arrived before the request was sent",
                self.id
            );
        }
        self.verify()?;
        Ok(Some(self.started.elapsed()))
    }
}

/// One generator thread: keeps one request in flight on each of its connections until the
/// deadline, and returns every round trip's latency in nanoseconds.
fn drive(mut conns: Vec<Conn>, deadline: Instant) -> anyhow::Result<Vec<u64>> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
    let mut latencies = Vec::with_capacity(1 << 16);
    for (i, c) in conns.iter_mut().enumerate() {
        epoll
            .add(
                c.stream.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
            )
            .context("epoll_ctl ADD")?;
        c.next_request();
        c.write_some()?;
        update_interest(&epoll, c, i)?;
    }
    let mut events = vec![EpollEvent::empty(); conns.len().min(1024)];
    // Wake at least every 50 ms, to notice the deadline even if the server stalls.
    let timeout = PollTimeout::try_from(50).expect("50 ms fits");
    while Instant::now() < deadline {
        let n = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for ev in &events[..n] {
            let i = ev.data() as usize;
            let c = &mut conns[i];
            let flags = ev.events();
            if flags.contains(EpollFlags::EPOLLOUT) {
                c.write_some()?;
            }
            if flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
                if let Some(latency) = c.read_some()? {
                    latencies.push(latency.as_nanos() as u64);
                    c.next_request();
                    c.write_some()?;
                }
            }
            update_interest(&epoll, c, i)?;
        }
    }
    Ok(latencies)
}

/// Asks for write readiness only while part of the request is unsent.
fn update_interest(epoll: &Epoll, c: &mut Conn, i: usize) -> anyhow::Result<()> {
    let want = c.sent < c.request.len();
    if want != c.wants_write {
        let mut flags = EpollFlags::EPOLLIN;
        if want {
            flags |= EpollFlags::EPOLLOUT;
        }
        epoll
            .modify(c.stream.as_fd(), &mut EpollEvent::new(flags, i as u64))
            .context("epoll_ctl MOD")?;
        c.wants_write = want;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn requests_are_mixed_case_and_change() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = Conn::open(listener.local_addr().unwrap(), 3, 40).unwrap();
        c.next_request();
        let first = c.request.clone();
        assert!(first.iter().any(u8::is_ascii_lowercase));
        assert!(first.iter().any(u8::is_ascii_uppercase));
        assert_eq!(c.expected, first.to_ascii_uppercase());
        c.next_request();
        assert_ne!(c.request, first);
    }

    #[test]
    fn json_has_the_documented_keys() {
        let json = LoadResult {
            process_known: true,
            ..LoadResult::default()
        }
        .to_json();
        for key in [
            "round_trips_per_sec",
            "p50_us",
            "p99_us",
            "server_cpu_s",
            "server_cpu_us_per_round_trip",
            "sq_thread_cpu_s",
            "server_rss_kib",
            "server_threads",
        ] {
            assert!(json.contains(&format!("\"{key}\": ")), "{key} in {json}");
        }
    }
}
