//! `bench report`: every measurement of the book, written as markdown tables and SVG plots.
//!
//! One command regenerates every figure: `cargo run --release -p bench -- report` (after
//! `cargo build --release --workspace`, which builds the servers). It runs the readiness table,
//! then each server under the same load with more and more idle connections beside it, and
//! writes into `docs/src/measurements/`:
//!
//! - `machine.md`: where and when the numbers were taken, and what was left out and why;
//! - `readiness.md`, `readiness.svg`: Kerrisk's table 63-9 on this machine;
//! - `throughput.md`, `throughput.svg`: round trips per second against idle connections;
//! - `idle-cpu.md`, `idle-cpu.svg`: the server's CPU while every connection is silent;
//! - `memory.md`, `memory.svg`: server memory per connection, threads against events;
//! - `syscalls.md`, `syscalls.svg`: system calls per round trip, counted by strace (`bench
//!   syscalls`; skipped, with a message, where strace is not installed);
//! - `busy.md`: 50 busy connections, where SQPOLL pays for its thread (or not);
//! - `stall.md`, `stall.svg`, `loops.md`: a slow handler's stall, and one loop against two
//!   (see `latency.rs`);
//! - `results.json`: every number above, for anyone who wants to plot them differently.
//!
//! `report --replot` redraws the tables and plots from `results.json` alone, measuring nothing:
//! for changing how a figure looks on a busy machine, without changing its numbers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use crate::load::{LoadArgs, LoadResult};
use crate::plot::{self, Axis, Bar, Series};
use crate::readiness::{self, KERRISK, Model};
use crate::table::{markdown, sig3, thousands};

/// Active connections in every load run. Few, so that each wake-up of select or poll serves
/// about one round trip and pays the whole scan of the idle ones: the lecture's cost, undiluted.
const ACTIVE: usize = 4;

/// The busy table: many connections each sending 512 B as fast as replies come back, no idle
/// ones, for the models whose cost per round trip is the question (the "50 x 512 B").
const BUSY: usize = 50;
const BUSY_SIZE: usize = 512;
const BUSY_LABELS: &[&str] = &["epoll", "aio (io_uring)", "aio (io_uring, SQPOLL)"];

/// One server configuration in the matrix.
#[derive(Clone)]
struct Plan<'a> {
    /// How the tables and plots name it.
    label: &'a str,
    /// A server binary of this workspace, with `args`; or "" for someone else's server
    /// (`--also NAME=CMD`), and then `args` is the command that starts it.
    server: &'a str,
    args: &'a str,
    /// The most idle connections this model is run with, and why not more.
    max_idle: usize,
    limit_note: &'a str,
}

const PLANS: &[Plan<'static>] = &[
    Plan {
        label: "blocking (thread)",
        server: "blocking",
        args: "--mode thread --max-clients 12000",
        max_idle: 10_000,
        limit_note: "",
    },
    Plan {
        label: "nonblocking",
        server: "nonblocking",
        args: "",
        max_idle: 10_000,
        limit_note: "",
    },
    Plan {
        label: "select",
        server: "select",
        args: "",
        max_idle: 900,
        limit_note: "select: at most ~900 idle, since descriptors past FD_SETSIZE (1024) are refused",
    },
    Plan {
        label: "poll",
        server: "poll",
        args: "",
        max_idle: 10_000,
        limit_note: "",
    },
    Plan {
        label: "epoll",
        server: "epoll",
        args: "",
        max_idle: 10_000,
        limit_note: "",
    },
    Plan {
        label: "sigio",
        server: "sigio",
        args: "",
        max_idle: 10_000,
        limit_note: "",
    },
    Plan {
        label: "aio (io_uring)",
        server: "aio",
        args: "--backend uring",
        max_idle: 10_000,
        limit_note: "",
    },
    Plan {
        label: "aio (io_uring, SQPOLL)",
        server: "aio",
        args: "--backend uring --sqpoll",
        max_idle: 10_000,
        limit_note: "",
    },
    Plan {
        label: "aio (POSIX AIO)",
        server: "aio",
        args: "--backend posix --threads 1100",
        max_idle: 1000,
        limit_note: "aio (POSIX AIO): at most 1,000 idle, since each idle client holds one of \
                     glibc's helper threads (`--threads` allows at most 4,096)",
    },
];

/// Left out on purpose, with the reason (printed in machine.md).
const NOT_MEASURED: &[&str] = &[
    "blocking `--mode single` and `--mode pool`: they serve one client, or `--workers` clients, \
     at a time, so idle connections would hold the only threads and the active ones would wait \
     for ever; that is their lesson, and no throughput can be measured beside it",
    "blocking `--mode fork`: a process per idle connection is the thread model again, with \
     thousands of processes; its cost per client is shown by the thread mode",
    "selectors-chat: a chat room broadcasts each line to the other clients, so it is not an echo \
     server (its `--echo` mode runs on the same epoll as the epoll chapter)",
];

/// What one run of the matrix settles for.
struct Settings {
    idle_levels: Vec<usize>,
    secs: f64,
    idle_secs: f64,
    readiness_ops: u64,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                idle_levels: vec![0, 100],
                secs: 0.5,
                idle_secs: 0.25,
                readiness_ops: 5_000,
            }
        } else {
            Settings {
                idle_levels: vec![0, 100, 1000, 5000, 10_000],
                secs: 2.0,
                idle_secs: 1.0,
                readiness_ops: readiness::DEFAULT_OPS,
            }
        }
    }

    /// The idle levels for one plan: those within its limit, plus the limit itself if a level
    /// was cut (select gets 0, 100 and 900 rather than stopping at 100).
    fn levels_for(&self, plan: &Plan) -> Vec<usize> {
        let mut levels: Vec<usize> = self
            .idle_levels
            .iter()
            .copied()
            .filter(|&l| l <= plan.max_idle)
            .collect();
        if self.idle_levels.iter().any(|&l| l > plan.max_idle) && !levels.contains(&plan.max_idle) {
            levels.push(plan.max_idle);
        }
        levels
    }
}

/// One server's runs.
struct Measured<'a> {
    label: &'a str,
    /// Its index in the plans: its colour, line and marker in every plot.
    style: usize,
    runs: Vec<LoadResult>,
    /// Runs that failed, as (idle, error).
    failures: Vec<(usize, String)>,
}

/// `--also NAME=CMD`: a server of someone else's, measured beside ours.
pub fn parse_also(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, cmd)) if !name.trim().is_empty() && !cmd.trim().is_empty() => {
            Ok((name.trim().to_owned(), cmd.to_owned()))
        }
        _ => Err("expected NAME=CMD, e.g. 'mine=python3 server.py {port}'".to_owned()),
    }
}

pub fn main(
    quick: bool,
    replot: bool,
    out: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    also: &[(String, String)],
) -> anyhow::Result<()> {
    let settings = Settings::new(quick);
    // Our servers, then the others' (`--also`), run over the same idle levels: a server that
    // cannot hold that many (a Python select server stops near 1,000) fails there, and the
    // tables and machine.md say so.
    let plans: Vec<Plan> = PLANS
        .iter()
        .cloned()
        .chain(also.iter().map(|(name, cmd)| Plan {
            label: name,
            server: "",
            args: cmd,
            max_idle: 10_000,
            limit_note: "",
        }))
        .collect();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let out = out.unwrap_or_else(|| {
        if quick {
            workspace.join("target/measurements-quick")
        } else {
            workspace.join("docs/src/measurements")
        }
    });
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    if replot {
        return self::replot(&out);
    }
    if cfg!(debug_assertions) {
        eprintln!("bench: warning: this is a debug build; measure with --release");
    }
    let started = Instant::now();

    // The readiness table.
    eprintln!("readiness: select, poll and epoll_wait with N watched descriptors");
    let rows = readiness::measure_all(settings.readiness_ops, |n| {
        eprintln!("  N = {}", thousands(n as u64))
    })?;

    // The load matrix. Servers whose binary is missing, or that do not start, are skipped.
    let total: usize = plans.iter().map(|p| settings.levels_for(p).len()).sum();
    let mut done = 0;
    let mut measured: Vec<Measured> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let levels = settings.levels_for(plan);
        let mut m = Measured {
            label: plan.label,
            style: i,
            runs: Vec::new(),
            failures: Vec::new(),
        };
        for (k, &idle) in levels.iter().enumerate() {
            done += 1;
            eprint!(
                "[{done:2}/{total}] {:<18} {:>6} idle ... ",
                plan.label,
                thousands(idle as u64)
            );
            let args = LoadArgs {
                idle,
                ..load_args(plan, &settings, bin_dir.clone())
            };
            match crate::load::run(&args) {
                Ok(r) => {
                    eprintln!(
                        "{:>9} round trips/s, idle CPU {}%, {} KiB RSS",
                        thousands(r.round_trips_per_sec.round() as u64),
                        sig3(r.idle_cpu_share * 100.0),
                        thousands(r.server_rss_kib)
                    );
                    m.runs.push(r);
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    eprintln!("failed: {e}");
                    // A server that cannot even start with no idle connections is skipped;
                    // one that failed with some is not tried with more.
                    done += levels.len() - k - 1;
                    if k == 0 {
                        skipped.push(format!("{}: {}", plan.label, one_line(&e)));
                    } else {
                        m.failures.push((idle, one_line(&e)));
                    }
                    break;
                }
            }
        }
        if !m.runs.is_empty() {
            measured.push(m);
        }
    }

    let mut busy: Vec<(&str, LoadResult)> = Vec::new();
    for plan in PLANS.iter().filter(|p| BUSY_LABELS.contains(&p.label)) {
        eprint!("busy: {:<24} {BUSY} x {BUSY_SIZE} B ... ", plan.label);
        let args = LoadArgs {
            conns: BUSY,
            idle: 0,
            size: BUSY_SIZE,
            idle_secs: 0.0,
            ..load_args(plan, &settings, bin_dir.clone())
        };
        match crate::load::run(&args) {
            Ok(r) => {
                eprintln!(
                    "{:>9} round trips/s, {} µs of CPU each",
                    thousands(r.round_trips_per_sec.round() as u64),
                    sig3(r.cpu_us_per_round_trip())
                );
                busy.push((plan.label, r));
            }
            Err(e) => eprintln!("failed: {}", one_line(&format!("{e:#}"))),
        }
    }

    write_machine(&out, &settings, quick, &measured, &skipped)?;
    write_readiness(&out, &rows)?;
    write_throughput(&out, &measured)?;
    write_idle_cpu(&out, &measured)?;
    write_memory(&out, &measured)?;
    if !busy.is_empty() {
        write_busy(&out, &busy)?; // else busy.md keeps its old numbers, as replot does
    }
    write_json(&out, &rows, &measured, &busy)?;
    match crate::syscalls::strace() {
        Ok(_) => {
            eprintln!("syscalls: every model under strace -f -c");
            let args = crate::syscalls::SyscallArgs::for_report(bin_dir.clone());
            write_syscalls(&out, &args, &crate::syscalls::run_all(&args)?)?;
        }
        Err(e) => eprintln!("syscalls: skipped, {e:#}; syscalls.md keeps its old numbers"),
    }
    crate::latency::report(&out, settings.secs, bin_dir.as_deref())?;
    eprintln!(
        "wrote {} in {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every table and plot again from `out/results.json`, measuring nothing (machine.md, which says
/// when and how the numbers were taken, and results.json itself are left as they are).
fn replot(out: &Path) -> anyhow::Result<()> {
    let path = out.join("results.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    use crate::json::Fields;
    let json = crate::json::parse(&text).with_context(|| format!("parse {}", path.display()))?;
    let rows = json
        .field("readiness")?
        .array("rows")?
        .iter()
        .map(|r| {
            let ops = r.field("ops")?;
            Ok(readiness::Row {
                n: r.num("n")? as usize,
                secs: [r.num("select")?, r.num("poll")?, r.num("epoll")?],
                ops: [
                    ops.num("select")? as u64,
                    ops.num("poll")? as u64,
                    ops.num("epoll")? as u64,
                ],
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut measured: Vec<Measured> = Vec::new();
    for run in json.array("load")? {
        let label = run.str("label")?;
        let result = LoadResult::from_json(run).with_context(|| format!("a run of {label}"))?;
        match measured.iter_mut().find(|m| m.label == label) {
            Some(m) => m.runs.push(result),
            None => measured.push(Measured {
                label,
                // Ours keep their plan's style; a server added with --also comes after them.
                style: PLANS.iter().position(|p| p.label == label).unwrap_or(
                    PLANS.len() + measured.iter().filter(|m| m.style >= PLANS.len()).count(),
                ),
                runs: vec![result],
                failures: Vec::new(),
            }),
        }
    }
    write_readiness(out, &rows)?;
    write_throughput(out, &measured)?;
    write_idle_cpu(out, &measured)?;
    write_memory(out, &measured)?;
    let busy = match json.array("busy") {
        Ok(runs) => runs
            .iter()
            .map(|run| Ok((run.str("label")?, LoadResult::from_json(run)?)))
            .collect::<anyhow::Result<Vec<_>>>()?,
        Err(_) => Vec::new(), // written before the busy table existed
    };
    if !busy.is_empty() {
        write_busy(out, &busy)?;
    }
    eprintln!("redrew {} from {}", out.display(), path.display());
    Ok(())
}

/// The load run of one plan in the matrix: ACTIVE connections of 64 bytes, no idle ones.
fn load_args(plan: &Plan, settings: &Settings, bin_dir: Option<PathBuf>) -> LoadArgs {
    let ours = !plan.server.is_empty();
    LoadArgs {
        server: ours.then(|| plan.server.to_owned()),
        server_args: if ours {
            plan.args.to_owned()
        } else {
            String::new()
        },
        spawn: (!ours).then(|| plan.args.to_owned()),
        addr: None,
        pid: None,
        conns: ACTIVE,
        idle: 0,
        secs: settings.secs,
        size: 64,
        idle_secs: settings.idle_secs,
        threads: 1,
        bin_dir,
        json: false,
    }
}

fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

fn write(out: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path = out.join(name);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The machine.

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`). Twelve lines for the one date the report prints,
/// where a date crate (`time`, `chrono`) would add to every student's first build.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn write_machine(
    out: &Path,
    s: &Settings,
    quick: bool,
    measured: &[Measured],
    skipped: &[String],
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| conformance::harness::parse_status_field(&m, "MemTotal"))
        .unwrap_or(0);
    let mut t = String::new();
    writeln!(
        t,
        "<!-- Generated by `cargo run --release -p bench -- report{}`; do not edit. -->\n",
        if quick { " --quick" } else { "" }
    )?;
    writeln!(t, "Measured on {}:\n", today())?;
    writeln!(t, "- CPU: {} ({cores} cores available)", cpu_model())?;
    writeln!(t, "- memory: {} GiB", sig3(mem_kib as f64 / 1048576.0))?;
    writeln!(
        t,
        "- kernel: Linux {}",
        read_trimmed("/proc/sys/kernel/osrelease")
    )?;
    writeln!(
        t,
        "- load: {ACTIVE} active connections doing closed-loop round trips of 64 bytes for {} s \
         per cell, beside 0 to {} idle connections; CPU at idle measured over {} s; \
         the busy table, {BUSY} connections of {BUSY_SIZE} bytes and none idle; \
         one load-generator thread on epoll, on the same machine\n",
        sig3(s.secs),
        thousands(s.idle_levels.iter().copied().max().unwrap_or(0) as u64),
        sig3(s.idle_secs)
    )?;
    writeln!(
        t,
        "Every figure comes from one command: `cargo build --release --workspace && cargo run \
         --release -p bench -- report`. Expect a few percent of noise between runs, more on a \
         busy machine; the shapes of the curves, not the third digit, are the result.\n"
    )?;
    let mut limits: Vec<String> = PLANS
        .iter()
        .filter(|p| measured.iter().any(|m| m.label == p.label) && !p.limit_note.is_empty())
        .map(|p| p.limit_note.to_owned())
        .collect();
    for m in measured {
        for (idle, e) in &m.failures {
            limits.push(format!(
                "{} with {} idle failed, so it was not run with more: {e}",
                m.label,
                thousands(*idle as u64)
            ));
        }
    }
    if !limits.is_empty() {
        writeln!(t, "Limits:\n")?;
        for l in limits {
            writeln!(t, "- {l}")?;
        }
        writeln!(t)?;
    }
    writeln!(t, "Not measured:\n")?;
    for n in NOT_MEASURED.iter().map(|s| s.to_string()).chain(
        skipped
            .iter()
            .map(|s| format!("{s} (skipped: the server did not start)")),
    ) {
        writeln!(t, "- {n}")?;
    }
    write(out, "machine.md", &t)
}

// ---------------------------------------------------------------------------------------------
// The figures.

fn write_syscalls(
    out: &Path,
    args: &crate::syscalls::SyscallArgs,
    counts: &[crate::syscalls::Count],
) -> anyhow::Result<()> {
    let mut t = format!(
        "<!-- Generated by `bench report`; do not edit. -->\n\n\
         System calls per round trip, counted by `strace -f -c` (every thread): {} clients \
         each making {} lockstep round trips of {} bytes, beside {} idle connections, minus \
         the same session without round trips. The last column compares the server's own \
         count (its summary's accept/read/write calls and wake-ups, or io_uring_enter calls) \
         with strace's count of those calls, per round trip.\n\n",
        args.clients,
        thousands(args.round_trips as u64),
        args.size,
        args.idle
    );
    t += &crate::syscalls::table(counts);
    write(out, "syscalls.md", &t)?;
    let bars: Vec<Bar> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| Bar {
            name: c.short.clone(),
            value: c.per_round_trip(),
            text: sig3(c.per_round_trip()),
            colour: plot::colour(i),
        })
        .collect();
    plot::bars(
        &out.join("syscalls.svg"),
        "System calls per round trip (strace -f -c)",
        "system calls",
        &bars,
    )
}

fn write_readiness(out: &Path, rows: &[readiness::Row]) -> anyhow::Result<()> {
    let mut t = String::from(
        "<!-- Generated by `bench report`; do not edit. -->\n\n\
         CPU seconds for 100,000 monitoring operations with N descriptors watched and one, \
         chosen at random, ready each time (the method of Kerrisk's table 63-9). Left: this \
         machine. Right: Kerrisk's published numbers (Linux 2.6.25, 2008 hardware).\n\n",
    );
    t += &markdown(&readiness::TABLE_HEADERS, &readiness::table_rows(rows));
    let ratio = |col: usize| {
        let first = rows.first().map_or(f64::NAN, |r| r.secs[col]);
        let last = rows.last().map_or(f64::NAN, |r| r.secs[col]);
        last / first
    };
    write!(
        t,
        "\nFrom N = 10 to N = 10,000, select grew {}×, poll {}×, epoll {}×. The watched \
         descriptors are eventfds (one descriptor each; 10,000 pipes would need 20,000). select \
         past 1,024 uses a heap-allocated descriptor bitmap: FD_SETSIZE limits glibc's `fd_set`, \
         not the kernel. For N > 100, select and poll ran fewer operations (100,000 × 100 / N) \
         and were scaled to 100,000.\n",
        sig3(ratio(0)),
        sig3(ratio(1)),
        sig3(ratio(2))
    )?;
    write(out, "readiness.md", &t)?;

    // Colour and marker by model (as select, poll and epoll in the other plots), ours solid
    // with filled markers, Kerrisk's dashed with hollow ones.
    let mut series = Vec::new();
    for (i, model) in Model::ALL.into_iter().enumerate() {
        let theirs = |k: &(usize, f64, f64, f64)| [k.1, k.2, k.3][i];
        let style = readiness_style(model);
        series.push(Series {
            line: plot::Line::Solid,
            ..Series::nth(
                style,
                &format!("{} (ours)", model.name()),
                rows.iter().map(|r| (r.n as f64, r.secs[i])).collect(),
            )
        });
        series.push(Series {
            line: plot::Line::Dashed,
            hollow: true,
            ..Series::nth(
                style,
                &format!("{} (Kerrisk, 2.6.25)", model.name()),
                KERRISK.iter().map(|k| (k.0 as f64, theirs(k))).collect(),
            )
        });
    }
    plot::lines(
        &out.join("readiness.svg"),
        "CPU seconds per 100,000 readiness calls",
        ("descriptors watched (N)", Axis::Log),
        ("CPU seconds", Axis::Log),
        &series,
    )
}

/// A readiness model's style index: that of its server in the load plots.
fn readiness_style(model: Model) -> usize {
    PLANS
        .iter()
        .position(|p| p.label == model.name())
        .unwrap_or(0)
}

/// The idle levels any server was run with, in order.
fn all_levels(measured: &[Measured]) -> Vec<usize> {
    let mut levels: Vec<usize> = measured
        .iter()
        .flat_map(|m| m.runs.iter().map(|r| r.idle))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    levels
}

/// A table with one row per server and one column per idle level.
fn by_idle(measured: &[Measured], cell: impl Fn(&LoadResult) -> String) -> String {
    let levels = all_levels(measured);
    let headers: Vec<String> = std::iter::once("server \\ idle connections".to_owned())
        .chain(levels.iter().map(|&l| thousands(l as u64)))
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = measured
        .iter()
        .map(|m| {
            std::iter::once(m.label.to_owned())
                .chain(levels.iter().map(|&l| {
                    m.runs
                        .iter()
                        .find(|r| r.idle == l)
                        .map_or_else(|| "–".to_owned(), &cell)
                }))
                .collect()
        })
        .collect();
    markdown(&headers, &rows)
}

/// The x axis of the plots against idle connections: 0, then 100 to 10,000 on a log scale.
const IDLE_AXIS: (&str, Axis) = (
    "idle connections held open (0, then a log scale)",
    Axis::SymLog,
);

/// One series per server of `value` against the idle connections, in the server's style.
fn against_idle(measured: &[Measured], value: impl Fn(&LoadResult) -> f64) -> Vec<Series> {
    measured
        .iter()
        .map(|m| {
            let points = m.runs.iter().map(|r| (r.idle as f64, value(r))).collect();
            Series::nth(m.style, m.label, points)
        })
        .collect()
}

fn write_throughput(out: &Path, measured: &[Measured]) -> anyhow::Result<()> {
    let mut t = format!(
        "<!-- Generated by `bench report`; do not edit. -->\n\n\
         Round trips per second with {ACTIVE} active connections, against the number of idle \
         connections held open beside them (64-byte requests, every reply checked):\n\n"
    );
    t += &by_idle(
        measured,
        |r| thousands(r.round_trips_per_sec.round() as u64),
    );
    t += "\nLatency of one round trip, p50 / p99 in µs:\n\n";
    t += &by_idle(measured, |r| {
        format!("{} / {}", sig3(r.p50_us), sig3(r.p99_us))
    });
    t += "\nServer CPU per round trip, in µs: the server's own threads (for SQPOLL, the kernel's \
          polling thread `iou-sqp` apart, its CPU seconds in brackets):\n\n";
    t += &by_idle(measured, |r| match r.sq_thread_cpu_s {
        0.0 => sig3(r.cpu_us_per_round_trip()),
        sq => format!("{} (+{} s)", sig3(r.cpu_us_per_round_trip()), sig3(sq)),
    });
    t += "\nServer CPU under load, share of one core (the load generator's own share in \
          brackets; it runs on the other core):\n\n";
    t += &by_idle(measured, |r| {
        format!(
            "{}% ({}%)",
            sig3(r.server_cpu_share * 100.0),
            sig3(r.client_cpu_share * 100.0)
        )
    });
    write(out, "throughput.md", &t)?;
    let series = against_idle(measured, |r| r.round_trips_per_sec);
    plot::lines(
        &out.join("throughput.svg"),
        &format!("Round trips per second, {ACTIVE} active connections"),
        IDLE_AXIS,
        ("round trips per second", Axis::Linear),
        &series,
    )
}

fn write_idle_cpu(out: &Path, measured: &[Measured]) -> anyhow::Result<()> {
    let mut t = String::from(
        "<!-- Generated by `bench report`; do not edit. -->\n\n\
         Server CPU while every connection sits silent, as a share of one core (the busy loop \
         asks every socket again and again; the others sleep in the kernel until something \
         happens):\n\n",
    );
    t += &by_idle(measured, |r| format!("{}%", sig3(r.idle_cpu_share * 100.0)));
    write(out, "idle-cpu.md", &t)?;
    let series = against_idle(measured, |r| r.idle_cpu_share * 100.0);
    plot::lines(
        &out.join("idle-cpu.svg"),
        "Server CPU with every connection silent",
        IDLE_AXIS,
        ("% of one core", Axis::Linear),
        &series,
    )
}

fn write_memory(out: &Path, measured: &[Measured]) -> anyhow::Result<()> {
    let mut t = String::from(
        "<!-- Generated by `bench report`; do not edit. -->\n\n\
         Server memory with the most idle connections each model was run with: resident set \
         (RSS) at start and with every connection open, the difference per connection, and \
         threads. RSS counts the process's own memory (thread stacks, buffers); the kernel's \
         socket buffers and per-thread kernel stacks come on top and are not in it.\n\n",
    );
    let largest: Vec<(&Measured, &LoadResult)> = measured
        .iter()
        .filter_map(|m| m.runs.iter().max_by_key(|r| r.idle).map(|r| (m, r)))
        .collect();
    let rows: Vec<Vec<String>> = largest
        .iter()
        .map(|(m, r)| {
            vec![
                m.label.to_owned(),
                thousands((r.idle + r.conns) as u64),
                thousands(r.rss_start_kib),
                thousands(r.server_rss_kib),
                sig3(r.rss_per_conn_kib()),
                thousands(r.server_threads),
            ]
        })
        .collect();
    t += &markdown(
        &[
            "server",
            "connections",
            "RSS at start (KiB)",
            "RSS (KiB)",
            "KiB per connection",
            "threads",
        ],
        &rows,
    );
    write(out, "memory.md", &t)?;
    let bars: Vec<Bar> = largest
        .iter()
        .map(|(m, r)| Bar {
            name: m.label.to_owned(),
            value: r.rss_per_conn_kib(),
            text: sig3(r.rss_per_conn_kib()),
            colour: plot::colour(m.style),
        })
        .collect();
    plot::bars(
        &out.join("memory.svg"),
        "Server memory (RSS) per connection, most connections each server ran with",
        "KiB per connection",
        &bars,
    )
}

/// The busy table: what a round trip costs the server when it is never idle for long.
fn write_busy(out: &Path, busy: &[(&str, LoadResult)]) -> anyhow::Result<()> {
    let mut t = format!(
        "<!-- Generated by `bench report`; do not edit. -->\n\n\
         {BUSY} connections, each sending {BUSY_SIZE} B as soon as its last reply is back, no idle \
         ones: round trips per second; for each round trip, the server's own CPU (SQPOLL's \
         kernel thread apart) and the `io_uring_enter` calls (enters) the server counted; that \
         thread's CPU; and the load generator's share of a core:\n\n"
    );
    let rows: Vec<Vec<String>> = busy
        .iter()
        .map(|(label, r)| {
            let enters = crate::syscalls::summary_field(&r.summary, " io_uring_enter call");
            vec![
                (*label).to_owned(),
                thousands(r.round_trips_per_sec.round() as u64),
                sig3(r.cpu_us_per_round_trip()),
                enters.map_or("–".into(), |n| {
                    sig3(n as f64 / r.round_trips.max(1) as f64)
                }),
                match r.sq_thread_cpu_s {
                    0.0 => "–".to_owned(), // no polling thread
                    sq => sig3(sq),
                },
                format!("{}%", sig3(r.client_cpu_share * 100.0)),
            ]
        })
        .collect();
    t += &markdown(
        &[
            "server",
            "round trips/s",
            "CPU µs each",
            "enters each",
            "SQ thread (s)",
            "generator",
        ],
        &rows,
    );
    write(out, "busy.md", &t)
}

/// One run as JSON, with the label it goes by in the tables.
fn labelled_json(label: &str, r: &LoadResult) -> String {
    let json = r.to_json();
    format!(
        "{{\"label\": {}, {}",
        crate::table::json_string(label),
        &json[1..]
    )
}

fn write_json(
    out: &Path,
    rows: &[readiness::Row],
    measured: &[Measured],
    busy: &[(&str, LoadResult)],
) -> anyhow::Result<()> {
    let runs: Vec<String> = measured
        .iter()
        .flat_map(|m| m.runs.iter().map(|r| labelled_json(m.label, r)))
        .collect();
    let busy: Vec<String> = busy.iter().map(|(l, r)| labelled_json(l, r)).collect();
    let text = format!(
        "{{\"date\": \"{}\", \"cpu\": {}, \"readiness\": {}, \"load\": [\n{}\n], \"busy\": [\n{}\n]}}\n",
        today(),
        crate::table::json_string(&cpu_model()),
        readiness::to_json(rows),
        runs.join(",\n"),
        busy.join(",\n")
    );
    write(out, "results.json", &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn also_takes_a_name_and_a_command() {
        assert_eq!(
            parse_also("mine=python3 s.py {port} --x=1"),
            Ok(("mine".to_owned(), "python3 s.py {port} --x=1".to_owned()))
        );
        assert!(parse_also("python3 s.py").is_err());
        assert!(parse_also("=python3 s.py").is_err());
        assert!(parse_also("mine=").is_err());
    }

    #[test]
    fn dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn select_stops_at_its_ceiling() {
        let s = Settings::new(false);
        let select = PLANS.iter().find(|p| p.server == "select").unwrap();
        assert_eq!(s.levels_for(select), vec![0, 100, 900]);
        let epoll = PLANS.iter().find(|p| p.server == "epoll").unwrap();
        assert_eq!(s.levels_for(epoll), s.idle_levels);
        let quick = Settings::new(true);
        assert_eq!(quick.levels_for(select), vec![0, 100]);
    }
}
