//! # bench: the lecture's claims, measured on this machine
//!
//! The lecture asserts that select and poll cost more the more descriptors they watch, that
//! epoll does not, that a busy loop burns a core, and that a thread per connection costs memory.
//! This crate turns each claim into a number a class can reproduce:
//!
//! ```text
//! cargo run --release -p bench -- readiness          # Kerrisk's table 63-9, on this machine
//! cargo build --release --workspace                  # the servers, then:
//! cargo run --release -p bench -- load --server epoll --conns 4 --idle 5000 --secs 3
//! cargo run --release -p bench -- load --spawn 'python3 server.py {port}' --idle 500
//! cargo run --release -p bench -- syscalls           # system calls per round trip (strace)
//! cargo run --release -p bench -- report             # every table and plot of the book
//! cargo run -p bench -- report --replot               # the same, redrawn from results.json
//! cargo run --release -p bench -- soak --seconds 60  # adversarial clients, every server
//! ```
//!
//! `readiness` times the readiness calls alone (no server). `load` starts one server binary on
//! port 0 (or any server with `--spawn CMD`, or measures one running at `--addr ADDR`), holds
//! idle connections open beside a few busy ones, and reads the server's CPU time, memory and
//! thread count from `/proc`. `report` runs both over the whole matrix and writes
//! markdown tables and SVG plots into `docs/src/measurements/`.
//!
//! Run it in release mode: a debug build measures the bench, not the kernel.
//!
//! It measures Linux (epoll, eventfd, `/proc`); elsewhere it builds, says so, and stops.

#[cfg(target_os = "linux")]
mod json;
#[cfg(target_os = "linux")]
mod latency;
#[cfg(target_os = "linux")]
mod load;
#[cfg(target_os = "linux")]
mod plot;
#[cfg(target_os = "linux")]
mod readiness;
#[cfg(target_os = "linux")]
mod report;
#[cfg(target_os = "linux")]
mod soak;
#[cfg(target_os = "linux")]
mod syscalls;
#[cfg(target_os = "linux")]
mod table;

#[cfg(target_os = "linux")]
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(target_os = "linux")]
use clap::{Parser, Subcommand};

/// Measures the I/O models: readiness-call cost, and each server under load.
/// Run it with --release; `bench report` regenerates every figure in the book.
#[cfg(target_os = "linux")]
#[derive(Parser)]
#[command(verbatim_doc_comment)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[cfg(target_os = "linux")]
#[derive(Subcommand)]
enum Command {
    /// CPU time of 100,000 select/poll/epoll_wait calls with N descriptors watched and one
    /// random one ready (the method of Kerrisk's TLPI table 63-9), beside his published numbers.
    Readiness {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Monitoring operations at N = 10 and 100; select and poll get proportionally fewer
        /// for larger N (the result is scaled to 100,000 either way).
        #[arg(long, default_value_t = readiness::DEFAULT_OPS)]
        ops: u64,
    },
    /// Start one server, hold idle connections open beside busy ones, and measure.
    Load(load::LoadArgs),
    /// Every model serves the same session under `strace -f -c`: system calls per round trip,
    /// the most frequent ones, and the server's own count beside strace's (needs strace).
    Syscalls(syscalls::SyscallArgs),
    /// A slow handler's stall: light clients' latency beside a heavy one, for the epoll loop, a
    /// worker pool, two loops and a thread per client; and one loop against two.
    Latency {
        /// Seconds per cell.
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        /// Where to write stall.md, stall.svg and loops.md (default: docs/src/measurements).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Directory holding the server binaries (default: the one holding this program).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Adversarial clients against every server (or --server), for --seconds each: random
    /// sizes and chunking, pauses, half-closes, resets, readers that stop reading. Every echoed
    /// reply is checked; descriptors, memory, threads and children are compared before and after.
    Soak(soak::SoakArgs),
    /// Run every measurement and write the tables and SVG plots for the book.
    Report {
        /// A fast smoke run: few idle levels, short windows. Writes to target/measurements-quick
        /// unless --out is given, so that it never overwrites the book's real numbers.
        #[arg(long)]
        quick: bool,
        /// Measure nothing: redraw every table and plot from the results.json already in the
        /// output directory (to change how a figure looks without re-running the load).
        #[arg(long, conflicts_with = "quick")]
        replot: bool,
        /// Where to write the markdown and SVG files (default: docs/src/measurements).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Directory holding the server binaries (default: the one holding this program).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Also measure a server of your own, named NAME in the tables and plots, started with
        /// CMD (`{port}` is replaced by a free port), e.g. --also 'mine=python3 server.py {port}'
        #[arg(long, value_name = "NAME=CMD", value_parser = report::parse_also)]
        also: Vec<(String, String)>,
    },
}

#[cfg(not(target_os = "linux"))]
fn main() -> ExitCode {
    eprintln!("bench: it measures Linux (epoll, eventfd and /proc); run it on Linux");
    ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Readiness { json, ops } => readiness::main(json, ops),
        Command::Load(load) => load::main(&load),
        Command::Syscalls(args) => syscalls::main(&args),
        Command::Latency { secs, out, bin_dir } => latency::main(secs, out, bin_dir),
        Command::Soak(soak) => soak::main(&soak),
        Command::Report {
            quick,
            replot,
            out,
            bin_dir,
            also,
        } => report::main(quick, replot, out, bin_dir, &also),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(target_os = "linux")]
/// CPU seconds (user + system, all threads) this process has used so far.
fn own_cpu_seconds() -> f64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
        .unwrap_or(0.0)
}
