//! `bench latency`: the lecture's last warning about multiplexing, measured, and the two ways
//! past it.
//!
//! 1. **A slow handler stalls the loop.** One heavy client sends 100 lines at a time; four light
//!    clients each send one line every 20 ms and time its round trip. Every line costs the server
//!    `--work-us` of CPU (0, 100, 1000 µs). Measured for the epoll loop alone (`reactor`, whose
//!    main.rs is the epoll chapter's level-triggered loop), `reactor --workers 4`,
//!    `reactor --loops 2` and `blocking --mode thread`: the light clients' p50 and p99.
//! 2. **One loop per core.** Eight clients doing closed-loop round trips of one line against
//!    `reactor --loops 1` and `--loops 2`, at 0 and 100 µs a line: round trips per second, with
//!    the server's CPU and the load generator's own (it shares the same cores).
//!
//! Writes `stall.md`, `stall.svg` and `loops.md` (and, from `bench report`, the same files beside
//! the others). The clients are plain blocking threads, one per connection: simple enough to
//! trust, and the light clients' pacing keeps them cheap.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use conformance::Server;
use conformance::harness::process_cpu_seconds;
use nix::sys::signal::Signal;

use crate::load::{percentile, server_binary};
use crate::plot::{self, Axis, Series};
use crate::table::{markdown, sig3, thousands};

/// The handler costs measured, µs per line.
pub const COSTS: [u64; 3] = [0, 100, 1000];
/// Light clients, each sending one line every `LIGHT_EVERY`.
const LIGHT: usize = 4;
const LIGHT_EVERY: Duration = Duration::from_millis(20);
/// Lines the heavy client sends at once, then waits for.
const HEAVY_BATCH: usize = 100;
/// Connections of the throughput measurement.
const CONNS: usize = 8;
/// How long a server may take to start, or to stop after Ctrl-C.
const PATIENCE: Duration = Duration::from_secs(20);

/// One server configuration of the stall measurement.
struct Plan {
    label: &'static str,
    server: &'static str,
    args: &'static str,
}

const PLANS: [Plan; 4] = [
    Plan {
        label: "epoll loop (reactor)",
        server: "reactor",
        args: "",
    },
    Plan {
        label: "reactor --workers 4",
        server: "reactor",
        args: "--workers 4",
    },
    Plan {
        label: "reactor --loops 2",
        server: "reactor",
        args: "--loops 2",
    },
    Plan {
        label: "blocking --mode thread",
        server: "blocking",
        args: "--mode thread",
    },
];

/// The light clients' latency beside the heavy one, for one server and one cost.
pub struct Stall {
    label: &'static str,
    cost_us: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    samples: usize,
    heavy_lines_per_sec: f64,
}

/// Round trips per second with `loops` loops.
pub struct Scaling {
    loops: usize,
    cost_us: u64,
    round_trips_per_sec: f64,
    server_cpu_share: f64,
    generator_cpu_share: f64,
}

pub fn main(secs: f64, out: Option<PathBuf>, bin_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let out = out.unwrap_or_else(|| workspace.join("docs/src/measurements"));
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    if cfg!(debug_assertions) {
        eprintln!("bench: warning: this is a debug build; measure with --release");
    }
    report(&out, secs, bin_dir.as_deref())?;
    eprintln!(
        "wrote stall.md, stall.svg and loops.md in {}",
        out.display()
    );
    Ok(())
}

/// Runs both measurements with a progress line per cell, and writes their files into `out`.
pub fn report(out: &Path, secs: f64, bin_dir: Option<&Path>) -> anyhow::Result<()> {
    eprintln!("latency: {LIGHT} light clients beside one heavy client, handler cost per line");
    let total = PLANS.len() * COSTS.len();
    let mut stalls = Vec::new();
    for (i, (plan, cost)) in PLANS
        .iter()
        .flat_map(|p| COSTS.iter().map(move |&c| (p, c)))
        .enumerate()
    {
        eprint!("[{:2}/{total}] {:<24} {cost:>5} µs ... ", i + 1, plan.label);
        let s = stall(plan, cost, secs, bin_dir)
            .with_context(|| format!("{} at {cost} µs a line", plan.label))?;
        eprintln!(
            "light p50 {} µs, p99 {} µs; heavy {} lines/s",
            sig3(s.p50_us),
            sig3(s.p99_us),
            thousands(s.heavy_lines_per_sec.round() as u64)
        );
        stalls.push(s);
    }
    eprintln!("loops: {CONNS} clients, round trips of one line, reactor --loops 1 and 2");
    let mut scaling = Vec::new();
    for cost in [0, 100] {
        for loops in [1, 2] {
            eprint!("  --loops {loops} {cost:>5} µs ... ");
            let s = scale(loops, cost, secs, bin_dir)
                .with_context(|| format!("--loops {loops} at {cost} µs a line"))?;
            eprintln!(
                "{} round trips/s, server {}% of a core, generator {}%",
                thousands(s.round_trips_per_sec.round() as u64),
                sig3(s.server_cpu_share * 100.0),
                sig3(s.generator_cpu_share * 100.0)
            );
            scaling.push(s);
        }
    }
    write_stall(out, &stalls, secs)?;
    write_loops(out, &scaling, secs)
}

/// A connection with deadlines, Nagle off (a one-line request must leave at once).
fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr).context("connect")?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(stream)
}

/// Sends `request` and checks that its upper-cased echo comes back, whole.
fn round_trip(stream: &mut TcpStream, request: &[u8], reply: &mut Vec<u8>) -> anyhow::Result<()> {
    stream.write_all(request).context("write")?;
    reply.resize(request.len(), 0);
    stream.read_exact(reply).context("read the reply")?;
    if !reply.iter().eq(request.to_ascii_uppercase().iter()) {
        bail!("a reply differs from its request");
    }
    Ok(())
}

fn start(server: &str, args: &str, cost: u64, bin_dir: Option<&Path>) -> anyhow::Result<Server> {
    let mut cmd = Command::new(server_binary(server, bin_dir)?);
    cmd.args(args.split_whitespace())
        .args(["--work-us", &cost.to_string()])
        .arg("127.0.0.1:0");
    Server::launch(cmd, None, PATIENCE).map_err(|e| anyhow!("{e}"))
}

/// Ctrl-C, and a clean exit within PATIENCE.
fn stop(server: Server) -> anyhow::Result<()> {
    let stopped = server.stop(Signal::SIGINT, PATIENCE);
    if stopped.killed || !stopped.status.success() {
        bail!("the server did not stop cleanly: {}", stopped.stderr.trim());
    }
    Ok(())
}

fn stall(plan: &Plan, cost: u64, secs: f64, bin_dir: Option<&Path>) -> anyhow::Result<Stall> {
    let server = start(plan.server, plan.args, cost, bin_dir)?;
    let addr = server.addr;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let heavy = thread::spawn(move || -> anyhow::Result<(u64, f64)> {
        let mut stream = connect(addr)?;
        let batch: Vec<u8> = (0..HEAVY_BATCH)
            .flat_map(|i| format!("heavy line {i:03}\n").into_bytes())
            .collect();
        let (mut lines, mut reply, started) = (0, Vec::new(), Instant::now());
        while Instant::now() < deadline {
            round_trip(&mut stream, &batch, &mut reply)?;
            lines += HEAVY_BATCH as u64;
        }
        Ok((lines, started.elapsed().as_secs_f64()))
    });
    let lights: Vec<_> = (0..LIGHT)
        .map(|i| {
            thread::spawn(move || -> anyhow::Result<Vec<u64>> {
                let mut stream = connect(addr)?;
                let line = format!("light client {i}\n").into_bytes();
                let (mut latencies, mut reply) = (Vec::new(), Vec::new());
                let mut next = Instant::now();
                while next < deadline {
                    let sent = Instant::now();
                    round_trip(&mut stream, &line, &mut reply)?;
                    latencies.push(sent.elapsed().as_nanos() as u64);
                    next += LIGHT_EVERY;
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for light in lights {
        latencies.extend(
            light
                .join()
                .map_err(|_| anyhow::anyhow!("a light client panicked"))??,
        );
    }
    let (lines, heavy_secs) = heavy
        .join()
        .map_err(|_| anyhow::anyhow!("the heavy client panicked"))??;
    stop(server)?;
    latencies.sort_unstable();
    let us = |p| percentile(&latencies, p).map_or(f64::NAN, |ns| ns as f64 / 1000.0);
    Ok(Stall {
        label: plan.label,
        cost_us: cost,
        p50_us: us(50.0),
        p99_us: us(99.0),
        max_us: us(100.0),
        samples: latencies.len(),
        heavy_lines_per_sec: lines as f64 / heavy_secs,
    })
}

fn scale(loops: usize, cost: u64, secs: f64, bin_dir: Option<&Path>) -> anyhow::Result<Scaling> {
    let server = start("reactor", &format!("--loops {loops}"), cost, bin_dir)?;
    let addr = server.addr;
    let mut streams = (0..CONNS)
        .map(|_| connect(addr))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut reply = Vec::new();
    for s in &mut streams {
        round_trip(s, b"warm up\n", &mut reply)?; // every connection accepted before the clock
    }
    let server_before = process_cpu_seconds(server.pid())?;
    let generator_before = crate::own_cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let clients: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut stream)| {
            thread::spawn(move || -> anyhow::Result<u64> {
                let line = format!("client {i} asks for a round trip\n").into_bytes();
                let (mut n, mut reply) = (0, Vec::new());
                while Instant::now() < deadline {
                    round_trip(&mut stream, &line, &mut reply)?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut round_trips = 0;
    for c in clients {
        round_trips += c
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = process_cpu_seconds(server.pid())? - server_before;
    let generator_cpu = crate::own_cpu_seconds() - generator_before;
    stop(server)?;
    Ok(Scaling {
        loops,
        cost_us: cost,
        round_trips_per_sec: round_trips as f64 / elapsed,
        server_cpu_share: server_cpu / elapsed,
        generator_cpu_share: generator_cpu / elapsed,
    })
}

fn write_stall(out: &Path, stalls: &[Stall], secs: f64) -> anyhow::Result<()> {
    let mut t = format!(
        "<!-- Generated by `bench report` (or `bench latency`); do not edit. -->\n\n\
         Round-trip latency of {LIGHT} light clients (one line every {} ms each) beside one \
         heavy client (batches of {HEAVY_BATCH} lines), against the CPU each line costs the \
         server's handler; {} s per cell. p50 / p99 / max in µs, then the heavy client's lines \
         per second:\n\n",
        LIGHT_EVERY.as_millis(),
        sig3(secs)
    );
    let headers = [
        "server",
        "cost per line (µs)",
        "p50",
        "p99",
        "max",
        "samples",
        "heavy lines/s",
    ];
    let rows: Vec<Vec<String>> = stalls
        .iter()
        .map(|s| {
            vec![
                s.label.to_owned(),
                thousands(s.cost_us),
                sig3(s.p50_us),
                sig3(s.p99_us),
                sig3(s.max_us),
                thousands(s.samples as u64),
                thousands(s.heavy_lines_per_sec.round() as u64),
            ]
        })
        .collect();
    t += &markdown(&headers, &rows);
    std::fs::write(out.join("stall.md"), t).context("write stall.md")?;
    let series: Vec<Series> = PLANS
        .iter()
        .enumerate()
        .map(|(i, plan)| {
            let points = stalls
                .iter()
                .filter(|s| s.label == plan.label)
                .map(|s| (s.cost_us as f64, s.p99_us / 1000.0))
                .collect();
            Series::nth(i, plan.label, points)
        })
        .collect();
    plot::lines(
        &out.join("stall.svg"),
        "p99 latency of a light client beside a heavy one",
        ("handler cost per line (µs)", Axis::SymLog),
        ("p99 round trip (ms)", Axis::Log),
        &series,
    )
}

fn write_loops(out: &Path, scaling: &[Scaling], secs: f64) -> anyhow::Result<()> {
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let mut t = format!(
        "<!-- Generated by `bench report` (or `bench latency`); do not edit. -->\n\n\
         Round trips per second of {CONNS} clients (one line each, closed loop) against one \
         loop and two, {} s per cell. CPU as a share of one core; the load generator runs on \
         the same {cores} cores as the server:\n\n",
        sig3(secs)
    );
    let rows: Vec<Vec<String>> = scaling
        .iter()
        .map(|s| {
            vec![
                format!("reactor --loops {}", s.loops),
                thousands(s.cost_us),
                thousands(s.round_trips_per_sec.round() as u64),
                format!("{}%", sig3(s.server_cpu_share * 100.0)),
                format!("{}%", sig3(s.generator_cpu_share * 100.0)),
            ]
        })
        .collect();
    t += &markdown(
        &[
            "server",
            "cost per line (µs)",
            "round trips/s",
            "server CPU",
            "generator CPU",
        ],
        &rows,
    );
    for cost in [0, 100] {
        let rate = |loops| {
            scaling
                .iter()
                .find(|s| s.loops == loops && s.cost_us == cost)
                .map_or(f64::NAN, |s| s.round_trips_per_sec)
        };
        writeln!(
            t,
            "\nAt {cost} µs a line, two loops did {}× the round trips of one.",
            sig3(rate(2) / rate(1))
        )?;
    }
    std::fs::write(out.join("loops.md"), t).context("write loops.md")
}
