//! # aio: asynchronous I/O, the lecture's last model
//!
//! Every earlier model asks the kernel "is this socket ready?" and then makes the call that
//! copies the data itself. Here the process hands the kernel the *whole* operation (accept,
//! receive into this buffer, send these bytes) and is told later that it is done: the data is
//! already in the buffer, or already sent. Two ways to do that on Linux, one per file:
//!
//! - `--backend uring` (default, `uring.rs`): io_uring. Operations go into a submission ring,
//!   results come back on a completion ring, and one `io_uring_enter` call hands over and
//!   collects many of them at once (`ring.rs`). The kernel really does the work, and takes
//!   receive buffers from one shared pool only when data arrives (`bufring.rs`). `--sqpoll`
//!   adds a kernel thread that takes submissions by itself: almost no system calls.
//! - `--backend posix` (`posix.rs`): POSIX AIO (`aio_read`, `aio_write`, `aio_suspend`). glibc
//!   implements it in user space with helper threads, each blocked in an ordinary `read(2)`:
//!   the interface is asynchronous, the machinery is the thread-per-client server again.
//!
//! Run it beside the client:
//!
//! ```text
//! cargo run -p aio                       # terminal 1 (io_uring)
//! cargo run -p aio -- --backend posix    # or POSIX AIO
//! cargo run -p aio -- --sqpoll           # or io_uring with the kernel's polling thread
//! cargo run -p client                    # terminal 2, 3, 4 ...
//! ```
//!
//! Watch: the uring summary compares operations with system calls: about 1 per
//! `io_uring_enter` with one client, 8 to 24 with 10,000 busy ones, depending on the load (`-v`
//! prints each wake-up's completions), and with `--sqpoll` under load hardly any calls at all;
//! and `ps -T -p PID` (the pid it announced) shows one thread, however many clients (with `--sqpoll`, one
//! more: the kernel's `iou-sqp`). With `--backend posix`,
//! `-v` prints the thread count as clients come and go, and `ps -T -o spid,comm,wchan` shows
//! why: one helper per idle client, blocked in the kernel's TCP receive, which lingers a
//! second after its client leaves; the summary gives the peak.
//!
//! The uring backend needs Linux 5.19 (buffer rings). No io_uring here at all (a kernel before
//! 5.1, `/proc/sys/kernel/io_uring_disabled`, a container's seccomp filter), or no buffer rings?
//! The server says so in one line and suggests `--backend posix`. The hidden flag `--simulate-no-uring` makes set-up
//! fail with that same ENOSYS, reported by the same code, so that the message can be seen and
//! tested on any machine.
//!
//! Compare it: `uring.rs` keeps select's names (`handle_new_connection`, `handle_client_data`,
//! `flush`) for the same jobs, now run when a completion arrives rather than when a socket is
//! ready; `posix.rs` is `blocking --mode thread` behind an asynchronous interface.

mod bufring;
mod posix;
mod ring;
mod uring;

use std::process::ExitCode;

use clap::{Parser, ValueEnum};

/// An echo server that hands the kernel whole operations and is told when they are done:
/// io_uring by default, or POSIX AIO (--backend posix), which glibc runs on helper threads.
#[derive(Parser)]
#[command(verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: support::Common,

    /// uring (io_uring, Linux 5.6 or later) or posix (POSIX AIO, run by glibc's helper threads).
    #[arg(long, value_enum, default_value_t = Backend::Uring, hide_possible_values = true)]
    backend: Backend,

    /// posix: helper threads, and so the most clients served at once; past that, a newcomer
    /// waits a second for one to leave, then is refused.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    threads: u32,

    /// uring: fail set-up exactly as a kernel without io_uring does (ENOSYS), to see and test
    /// the message; the error goes through the same reporting code as a real one.
    #[arg(long, hide = true)]
    simulate_no_uring: bool,

    /// uring: a kernel thread polls the submission ring (IORING_SETUP_SQPOLL), and the loop
    /// watches the completion ring before it sleeps: almost no system calls under load, at the
    /// price of a second thread that spins while there is work.
    #[arg(long)]
    sqpoll: bool,

    /// uring: fail set-up as a kernel or sandbox that refuses --sqpoll does (EPERM).
    #[arg(long, hide = true)]
    simulate_no_sqpoll: bool,

    /// uring: behave as Linux 5.19, before multishot receive (6.0): one receive per
    /// submission, to test that path on any machine.
    #[arg(long, hide = true)]
    simulate_old_kernel: bool,

    /// uring: 4 KiB receive buffers in the shared pool (a power of two). 512 (2 MiB, resident
    /// once a busy load has cycled through them) serve thousands of clients; a small pool
    /// tests what happens when it runs dry.
    #[arg(long, hide = true, default_value_t = 512)]
    #[arg(value_parser = clap::value_parser!(u16).range(1..=32768))]
    buffers: u16,

    /// uring: submission ring entries (the completion ring has 8 times as many); a small ring
    /// tests what happens when both fill.
    #[arg(long, hide = true, default_value_t = 4096)]
    #[arg(value_parser = clap::value_parser!(u32).range(1..=4096))]
    ring_entries: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// io_uring (Linux 5.6 or later; from 5.19, one accept serves every connection).
    Uring,
    /// POSIX AIO as glibc implements it: helper threads.
    Posix,
}

fn main() -> ExitCode {
    let args = Args::parse();
    support::init(&args.common);
    support::finish(match args.backend {
        Backend::Uring => uring::run(&args),
        Backend::Posix => posix::run(&args),
    })
}
