//! What every server in this workspace shares and none of them teaches.
//!
//! Command-line arguments, the echo transform, `-v` tracing, Ctrl-C handling and the exit
//! summary live here, so that each chapter's `main.rs` holds only its I/O model. What this crate
//! does make, precisely: the listening socket (`socket`, `bind`, `listen`, in [`listen`]), the
//! signal arrangements (`sigaction`, `pthread_sigmask`, `sigpending`, `sigwait`), and the spare
//! descriptor (`open` of /dev/null). What it never makes: a readiness call (`select`, `poll`,
//! `epoll_wait`, `sigwaitinfo`, `io_uring_enter` are each in their model's own file) or any
//! per-connection I/O (`accept`, `read`, `write`, `close` of a client): those are the models.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64, Ordering};

use anyhow::Context;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};

/// The address every server listens on unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

// ANCHOR: common_args
/// The arguments every server takes; each chapter adds its own with `#[command(flatten)]`.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Address to listen on: IP:PORT, localhost:PORT, or a bare PORT for 127.0.0.1:PORT
    /// (port 0 picks any free port).
    #[arg(default_value = DEFAULT_ADDR, value_parser = parse_addr)]
    pub addr: SocketAddr,

    /// Trace each step on stderr: connections, closes, and the wake-ups of a loop if it has one.
    #[arg(short, long)]
    pub verbose: bool,
}
// ANCHOR_END: common_args

/// The one address parser of the workspace, for the servers and the client alike:
/// `IP:PORT` (`[::1]:PORT` for IPv6), `localhost:PORT`, or a bare `PORT`, both meaning
/// 127.0.0.1:PORT (the loopback address the servers bind by default). Nothing is looked up.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let loopback = |port: &str| {
        port.parse()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let parsed = match s.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => loopback(port).ok(),
        Some(_) => s.parse().ok(),
        None => loopback(s).ok(),
    };
    parsed.ok_or_else(|| {
        format!(
            "'{s}' is not an address: use IP:PORT, localhost:PORT or a bare PORT, e.g. \
             127.0.0.1:8080 or 8080 (port 0 picks any free port)"
        )
    })
}

static VERBOSITY: AtomicU8 = AtomicU8::new(0);

/// Records the options every server shares. Call it first thing in `main`.
pub fn init(common: &Common) {
    VERBOSITY.store(u8::from(common.verbose), Ordering::Relaxed);
}

/// 1 with `-v`, else 0.
pub fn verbosity() -> u8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// Prints to stderr when the server runs with `-v`, prefixed with the program's name.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::verbosity() > 0 {
            $crate::say_line(format_args!($($arg)*));
        }
    };
}

/// Prints `program: message` on stderr, always, as one write (see [`say_line`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say_line(format_args!($($arg)*))
    };
}

/// Writes `program: message` and a newline to stderr in one `write`, so that lines from
/// several processes (the fork chapter's children) or threads never interleave mid-line.
/// (`eprintln!` may write a line in pieces: stderr is unbuffered.)
pub fn say_line(message: fmt::Arguments) {
    let line = format!("{}{}: {message}\n", after_ctrl_c(), program());
    let _ = io::stderr().write_all(line.as_bytes());
}

/// A newline, once, for the first line written after Ctrl-C, if stderr is a terminal: the
/// terminal has echoed `^C` with no newline, and the line (a trace, the summary) must not
/// start after it. Empty otherwise. The signal counts from the moment it is pending: a server
/// may trace the wake-up that brings it (aio's io_uring) before it takes it.
fn after_ctrl_c() -> &'static str {
    static DONE: AtomicBool = AtomicBool::new(false);
    let pending = || {
        let stop = stop_signals();
        pending_signals().is_ok_and(|p| stop.iter().any(|s| p.contains(s)))
    };
    let arrived = STOP.load(Ordering::SeqCst) != 0 || pending();
    if !arrived || DONE.swap(true, Ordering::SeqCst) {
        return "";
    }
    if io::stderr().is_terminal() { "\n" } else { "" }
}

/// The program's name as the user typed it (`select`, `poll`, ...), for messages.
pub fn program() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::args_os()
            .next()
            .as_deref()
            .map(std::path::Path::new)
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "server".to_owned())
    })
}

// ANCHOR: transform
/// The echo protocol: ASCII `a`-`z` become `A`-`Z`; every other byte, UTF-8 and binary
/// included, is left exactly as it was. Works on any chunk, since it looks at one byte at a time.
pub fn transform(data: &mut [u8]) {
    data.make_ascii_uppercase();
}
// ANCHOR_END: transform

// ANCHOR: listen
/// Set-up shared by every server: socket, SO_REUSEADDR, bind and listen, as std's
/// `TcpListener::bind` does them, then listen again with the largest accept queue the kernel
/// allows. std asks for 128: thousands of clients connecting at once would overflow that, and
/// every connection attempt the kernel drops costs its client a one-second retry.
pub fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?;
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN).context("listen")?;
    Ok(listener)
}
// ANCHOR_END: listen

/// Turns a failed `bind` into one line that says what to do about it.
pub fn bind_error(addr: SocketAddr, err: io::Error) -> anyhow::Error {
    let advice = match err.kind() {
        io::ErrorKind::AddrInUse => {
            "is another chapter's server still running? Stop it (Ctrl-C), or pass another \
             address, e.g. 127.0.0.1:0 for any free port"
        }
        io::ErrorKind::AddrNotAvailable => {
            "that IP is not an address of this machine; use 127.0.0.1"
        }
        io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges; pick a port above 1024"
        }
        _ => "pass another address, e.g. 127.0.0.1:0",
    };
    anyhow::anyhow!("cannot listen on {addr}: {err} ({advice})")
}

/// Prints the one line that tells the user (and the tests) where the server is, and flushes it:
/// `select listening on 127.0.0.1:8080 (pid 1234)`. The pid is there for `top -p`, `strace -p`
/// and `ls /proc/PID/task`, so that nobody has to guess with `pgrep` on a shared machine.
pub fn announce(listener: &TcpListener) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr().context("getsockname")?;
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{} listening on {addr} (pid {})",
        program(),
        std::process::id()
    )?;
    out.flush()?;
    Ok(addr)
}

/// Ends `main`: success exits 0; a set-up error prints one line on stderr and exits 1.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}: {err:#}", program());
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C: a flag set by a signal handler, checked by the server's loop.

/// The signal that asked us to stop, or 0.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: nix::libc::c_int) {
    // Only an atomic store: that is all a signal handler may safely do here.
    STOP.store(signal, Ordering::SeqCst);
}

// ANCHOR: catch_signals
/// For event loops. Catches SIGINT and SIGTERM with a handler that only sets a flag, and
/// *blocks* both signals, so that they can only be delivered inside the loop's wait call.
///
/// Returns the signal mask to wait with: pass it to `pselect`, `ppoll`, `epoll_pwait` (or
/// io_uring's `submit_with_args`). The wait installs it atomically, the pending signal is
/// delivered, the wait fails with EINTR, and the loop sees [`stop_requested`]. With a plain
/// `select` the signal could land between checking the flag and starting to wait, and the
/// server would sleep on until the next client came: the race `pselect` was invented to close.
/// But the signal gets in only if the wait *sleeps*: see [`stop_pending`] for the busy case.
pub fn catch_signals() -> anyhow::Result<SigSet> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler does nothing but an atomic store, which is async-signal-safe.
        unsafe { nix::sys::signal::sigaction(signal, &action) }
            .with_context(|| format!("sigaction({signal})"))?;
    }
    let mut wait_mask = SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        SigmaskHow::SIG_BLOCK,
        Some(&stop_signals()),
        Some(&mut wait_mask),
    )
    .context("pthread_sigmask")?;
    wait_mask.remove(Signal::SIGINT);
    wait_mask.remove(Signal::SIGTERM);
    Ok(wait_mask)
}
// ANCHOR_END: catch_signals

// ANCHOR: stop_pending
/// For event loops, after every wait that returned: is SIGINT or SIGTERM pending, still
/// blocked? Linux lets a signal in through the wait's mask only while the wait sleeps. A
/// `pselect`, `ppoll` or `epoll_pwait` that finds a descriptor ready at once returns it and
/// puts the blocking mask back, and the signal stays pending: under steady load every wait
/// finds one, and the server would never stop. So ask (`sigpending`), and record the signal
/// for [`stop_requested`].
pub fn stop_pending() -> bool {
    let Ok(pending) = pending_signals() else {
        return false;
    };
    let signal = stop_signals().iter().find(|&s| pending.contains(s));
    signal.map(record_stop).is_some()
}
// ANCHOR_END: stop_pending

/// The signals pending for this thread or the process, blocked so not yet delivered
/// (`sigpending`, which nix 0.32 does not wrap).
pub fn pending_signals() -> nix::Result<SigSet> {
    let mut raw: nix::libc::sigset_t = *SigSet::empty().as_ref();
    // SAFETY: `raw` is an initialised sigset_t, which sigpending overwrites with the pending set.
    nix::errno::Errno::result(unsafe { nix::libc::sigpending(&mut raw) })?;
    // SAFETY: `raw` was initialised by sigemptyset (SigSet::empty), then filled by sigpending.
    Ok(unsafe { SigSet::from_sigset_t_unchecked(raw) })
}

/// SIGINT and SIGTERM: the signals that ask a server to stop.
pub fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// Records that `signal` asked us to stop, for a server that takes SIGINT and SIGTERM itself
/// (with `sigwaitinfo`, say) rather than through the handler of [`catch_signals`].
pub fn record_stop(signal: Signal) {
    STOP.store(signal as i32, Ordering::SeqCst);
}

/// Has SIGINT or SIGTERM arrived?
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst) != 0
}

// ANCHOR: exit_on_signal
/// For servers whose threads block in `accept` and `read`, where no wait call can take a mask.
/// Call it first in `main`, before any other thread starts: it blocks SIGINT and SIGTERM (every
/// thread started later inherits that mask) and starts one thread that waits for them with
/// `sigwait`, then runs `on_stop` (print the summary, reap children) and exits with status 0.
pub fn exit_on_signal(on_stop: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    let signals = stop_signals();
    signals.thread_block().context("pthread_sigmask")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // Only the stop signals are for this thread: others (SIGCHLD, say) must go to the
            // threads that wait for them.
            let _ = SigSet::all().thread_block();
            if let Ok(signal) = signals.wait() {
                STOP.store(signal as i32, Ordering::SeqCst);
                on_stop();
                std::process::exit(0);
            }
        })
        .context("spawn the signal thread")?;
    Ok(())
}
// ANCHOR_END: exit_on_signal

/// In a child process made with `fork`: unblock SIGINT and SIGTERM and restore their default
/// action, so that the child dies of them instead of inheriting the parent's arrangements.
pub fn reset_signals_in_child() {
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: restoring the default disposition installs no handler.
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
    }
    let _ = stop_signals().thread_unblock();
}

// ANCHOR: spin
/// Simulated work for the servers' `--work-us`: `cost` of CPU, spent spinning on the clock as
/// a computation would spend it. (A sleep would give the core away and hide the cost; a
/// blocking call made by mistake looks like a sleep.)
pub fn spin(cost: std::time::Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < cost {
        std::hint::spin_loop();
    }
}
// ANCHOR_END: spin

// ---------------------------------------------------------------------------------------------
// Small helpers that name the answers that mean "not yet" rather than "failed".

/// The call would have blocked: nothing to do on this descriptor for now.
pub fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// A signal arrived during the call; try again (or notice that we were asked to stop).
pub fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

/// `accept` failed because this process (EMFILE) or the whole system (ENFILE) has no descriptor
/// left. The waiting connection stays in the queue, so the listener stays readable.
pub fn out_of_descriptors(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE)
    )
}

/// Opens a descriptor to hold in reserve, so that when `accept` fails with EMFILE the server can
/// close it, accept the waiting connection, close that too, and reserve again.
pub fn reserve_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

// ---------------------------------------------------------------------------------------------
// Counters and the summary printed on exit.

/// One counter, shared freely between threads.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters every server keeps. The exit summary prints them.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: Counter,
    /// Bytes read from clients.
    pub bytes_in: Counter,
    /// Bytes written to clients.
    pub bytes_out: Counter,
    /// Times the server's loop woke up (a readiness call returned, or a busy-loop pass began).
    pub wakeups: Counter,
    /// `accept`/`read`/`write` calls made.
    pub calls: Counter,
    /// Of those, calls that answered "would block" (EAGAIN).
    pub would_block: Counter,
}

/// The server's counters.
pub static STATS: Stats = Stats {
    connections: Counter::new(),
    bytes_in: Counter::new(),
    bytes_out: Counter::new(),
    wakeups: Counter::new(),
    calls: Counter::new(),
    would_block: Counter::new(),
};

/// A byte count in the unit a human reads fastest.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        match self.0 {
            0..1024 => write!(f, "{} B", self.0),
            1024..1048576 => write!(f, "{:.1} KiB", b / 1024.0),
            1048576..1073741824 => write!(f, "{:.1} MiB", b / 1048576.0),
            _ => write!(f, "{:.2} GiB", b / 1073741824.0),
        }
    }
}

/// `n` and the words that agree with it: `count(1, "client", "clients")` is `1 client`,
/// `count(3, "client", "clients")` is `3 clients`. Every count a server prints goes through it.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Prints why we stopped and the summary line on stderr:
/// `summary: 3 connections, 1.2 KiB in, 1.2 KiB out, 40 wake-ups, 95 calls, 12 would-block (12.6%), ...`
/// followed by the chapter's own counters (`extra`, each made with [`count`] where it needs a
/// plural), which name what its model makes visible.
pub fn summary(extra: &[String]) {
    let s = &STATS;
    let (calls, would_block) = (s.calls.get(), s.would_block.get());
    let share = if calls == 0 {
        0.0
    } else {
        100.0 * would_block as f64 / calls as f64
    };
    let why = match STOP.load(Ordering::SeqCst) {
        0 => "finished".to_owned(),
        sig => match Signal::try_from(sig) {
            Ok(sig) => format!("stopped by {sig}"),
            Err(_) => format!("stopped by signal {sig}"),
        },
    };
    let mut line = format!(
        "summary: {}, {} in, {} out",
        count(s.connections.get(), "connection", "connections"),
        Bytes(s.bytes_in.get()),
        Bytes(s.bytes_out.get()),
    );
    // A server without a loop that wakes (the blocking chapter) has nothing to say here.
    if s.wakeups.get() > 0 {
        line.push_str(&format!(
            ", {}",
            count(s.wakeups.get(), "wake-up", "wake-ups")
        ));
    }
    line.push_str(&format!(", {}", count(calls, "call", "calls")));
    if s.wakeups.get() > 0 || would_block > 0 {
        line.push_str(&format!(", {would_block} would-block ({share:.1}%)"));
    }
    for item in extra {
        line.push_str(&format!(", {item}"));
    }
    say_line(format_args!("{why}"));
    say_line(format_args!("{line}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_changes_only_ascii_lowercase() {
        let mut all: Vec<u8> = (0..=255).collect();
        transform(&mut all);
        for (i, b) in all.iter().enumerate() {
            let i = i as u8;
            let want = if i.is_ascii_lowercase() { i - 32 } else { i };
            assert_eq!(*b, want, "byte {i:#04x}");
        }
        let mut utf8 = "héllo, 世界 ß".as_bytes().to_vec();
        transform(&mut utf8);
        assert_eq!(utf8, "HéLLO, 世界 ß".as_bytes());
    }

    #[test]
    fn addresses_parse_or_explain() {
        assert_eq!(parse_addr("127.0.0.1:0").unwrap().port(), 0);
        assert!(parse_addr("[::1]:8080").is_ok());
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(parse_addr("localhost:8080"), Ok(loopback));
        assert_eq!(parse_addr("LocalHost:8080"), Ok(loopback));
        assert_eq!(parse_addr("8080"), Ok(loopback));
        for garbage in [
            "localhost",
            "localhost:http",
            "80800",
            "example.com:80",
            "1.2.3:4",
            "",
        ] {
            let err = parse_addr(garbage).unwrap_err();
            assert!(err.contains("IP:PORT") && err.contains("8080"), "{err}");
        }
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(count(0, "wake-up", "wake-ups"), "0 wake-ups");
        assert_eq!(count(1, "wake-up", "wake-ups"), "1 wake-up");
        assert_eq!(
            count(2, "child reaped", "children reaped"),
            "2 children reaped"
        );
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(Bytes(12).to_string(), "12 B");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(3 * 1048576).to_string(), "3.0 MiB");
    }
}
