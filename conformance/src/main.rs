//! `cargo run -p conformance -- [OPTIONS] [ADDR]`: grades any echo server, in any language,
//! against the contract every server of this workspace keeps.
//!
//! ```text
//! cargo run -p conformance -- 127.0.0.1:8080                       # a server already running
//! cargo run -p conformance -- --spawn 'python3 server.py {port}'   # started, checked, stopped
//! cargo run -p conformance -- --plain --only hello,slow-reader 127.0.0.1:9000
//! ```
//!
//! The checks are the library's (`conformance::checks`), the very code every crate's tests run.
//! A started server is stopped with SIGINT, killed after a grace period, and killed by the
//! kernel if this program dies first (PR_SET_PDEATHSIG): it is never left running. It leads a
//! process group of its own, and what it forks is stopped with it, also on Ctrl-C.

use std::net::{SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use clap::Parser;
use conformance::checks::{self, Failure, NAMES, NEED_PROCESS, Target, Verdict};
use conformance::{Server, json_string, summary_line};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Checks that an echo server, in any language, keeps the contract: echo, binary, half-close,
/// resets, many clients, a slow reader; with --spawn also idle CPU, memory and Ctrl-C.
///
/// Exit status: 0 when every check run passed, 1 when one failed, 2 when it could not check.
#[derive(Parser, Debug)]
#[command(name = "conformance", verbatim_doc_comment)]
struct Args {
    /// The server to check [default: 127.0.0.1:8080, or the one CMD listens on]
    addr: Option<SocketAddr>,
    /// Start the server with CMD (split into words like a shell, but no shell runs), `{port}` replaced
    /// by a free port; stop it with SIGINT afterwards
    #[arg(long, value_name = "CMD")]
    spawn: Option<String>,
    /// A plain echo server: bytes come back unchanged, not upper-cased
    #[arg(long)]
    plain: bool,
    /// Print one JSON array, an object per check: check, passed, detail, hint
    #[arg(long)]
    json: bool,
    /// Run only these checks (see --list)
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    only: Vec<String>,
    /// List the checks and exit
    #[arg(long)]
    list: bool,
    /// Clients connected at once in the `concurrent` check
    #[arg(long, value_name = "N", default_value_t = 200)]
    clients: usize,
    /// Seconds any one wait may take before a check gives up
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
    /// MiB the slow reader sends without reading
    #[arg(long, value_name = "MIB", default_value_t = 48)]
    slow_mib: usize,
}

/// What each check does, for --list.
const ABOUT: &[(&str, &str)] = &[
    (
        "hello",
        "a line comes back upper-cased (unchanged with --plain)",
    ),
    (
        "binary",
        "256 KiB of random bytes in random chunks, read concurrently: byte-exact",
    ),
    (
        "half-close",
        "data, then shutdown(SHUT_WR): the whole reply, then end-of-file",
    ),
    (
        "resets",
        "50 clients reset mid-stream (SO_LINGER 0): the server still answers",
    ),
    ("concurrent", "--clients N at once, interleaved round trips"),
    (
        "slow-reader",
        "one client sends tens of MiB without reading: others answered promptly, it gets every byte",
    ),
    ("idle-cpu", "CPU while 100 clients sit idle (needs --spawn)"),
    ("memory", "RSS growth under the slow reader (needs --spawn)"),
    (
        "sigint",
        "how it takes Ctrl-C, informational (needs --spawn)",
    ),
];

/// One line of the report.
struct Line {
    check: &'static str,
    /// Ok(figure) or Err(failure); an informational line is always Ok.
    verdict: Verdict,
    informational: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for (name, about) in ABOUT {
            println!("{name:<12} {about}");
        }
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(lines) => {
            report(&args, &lines);
            if lines.iter().all(|l| l.verdict.is_ok()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(why) => {
            eprintln!("conformance: {why}");
            ExitCode::from(2)
        }
    }
}

/// Runs the chosen checks; Err when nothing could be checked.
fn run(args: &Args) -> Result<Vec<Line>, String> {
    for name in &args.only {
        if !NAMES.contains(&name.as_str()) {
            return Err(format!(
                "no check named {name:?}; the checks are {}",
                NAMES.join(", ")
            ));
        }
        if args.spawn.is_none() && NEED_PROCESS.contains(&name.as_str()) {
            return Err(format!(
                "{name} measures the server's process: start it with --spawn CMD"
            ));
        }
    }
    if args.clients == 0 || args.slow_mib == 0 || !args.timeout.is_finite() || args.timeout <= 0.0 {
        return Err("--clients, --slow-mib and --timeout must be more than 0".to_owned());
    }
    let patience = Duration::from_secs_f64(args.timeout);
    let chosen = |name: &str| {
        (args.only.is_empty() || args.only.iter().any(|o| o == name))
            && (args.spawn.is_some() || !NEED_PROCESS.contains(&name))
    };

    let mut server = match &args.spawn {
        Some(cmd) => {
            let mut server = Server::from_command_line(cmd, patience.max(Duration::from_secs(10)))
                .map_err(|e| format!("could not start the server: {e}"))?;
            if let Some(addr) = args.addr {
                server.addr = addr;
            }
            stop_with_us(server.pid());
            Some(server)
        }
        None => None,
    };
    let addr = match &server {
        Some(s) => s.addr,
        None => args
            .addr
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
    };
    if let Err(e) = TcpStream::connect_timeout(&addr, patience) {
        return Err(format!(
            "nothing is listening on {addr} ({e}): start the server, or let the checker start \
             it with --spawn CMD"
        ));
    }
    if !args.json {
        match &args.spawn {
            Some(cmd) => println!("checking {addr}, started with: {cmd}"),
            None => println!("checking {addr}"),
        }
    }
    let target = Target {
        plain: args.plain,
        patience,
        ..Target::new(addr)
    };
    let pid = server.as_ref().map(Server::pid);

    let mut lines = Vec::new();
    let mut add = |check: &'static str, verdict: Verdict| {
        if !args.json {
            print_line(check, &verdict, false);
        }
        lines.push(Line {
            check,
            verdict,
            informational: false,
        });
    };
    // A started server that died takes the remaining checks with it: say so, once, instead of
    // a wall of refused connections.
    let mut died_during: Option<&'static str> = None;
    let mut step = |check: &'static str, server: &mut Option<Server>, run: &dyn Fn() -> Verdict| {
        let mut verdict = match died_during {
            Some(during) => Err(Failure {
                detail: format!("not run: the server exited during the {during} check"),
                hint: "see that check's failure, and the server's own error output".to_owned(),
            }),
            None => catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| {
                Err(Failure {
                    detail: "the checker itself panicked (see above)".to_owned(),
                    hint: "a bug in the checker: please report it".to_owned(),
                })
            }),
        };
        // A failure may be the server dying: give it a moment to finish exiting, and say so.
        if let (Err(f), Some(s), None) = (&mut verdict, server.as_mut(), died_during)
            && let Some(status) = s.exited_within(Duration::from_millis(500))
        {
            let stderr = s.stderr();
            let last_words = stderr.lines().rev().find(|l| !l.trim().is_empty());
            f.detail += &format!("; then the server exited ({status})");
            if let Some(words) = last_words {
                f.detail += &format!(", its last words: {}", words.trim());
            }
            // The check's own guess at a cause (lost bytes, one client at a time) is wrong now.
            if check != "resets" {
                f.hint = checks::HINT_DIED.to_owned();
            }
            died_during = Some(check);
        }
        add(check, verdict);
    };
    if chosen("hello") {
        step("hello", &mut server, &|| checks::hello(&target));
    }
    if chosen("binary") {
        step("binary", &mut server, &|| checks::binary(&target));
    }
    if chosen("half-close") {
        step("half-close", &mut server, &|| checks::half_close(&target));
    }
    if chosen("resets") {
        step("resets", &mut server, &|| checks::resets(&target));
    }
    if chosen("concurrent") {
        step("concurrent", &mut server, &|| {
            checks::concurrent(&target, args.clients)
        });
    }
    if chosen("slow-reader") || chosen("memory") {
        let run = std::cell::RefCell::new(None);
        let slow = || {
            let r = checks::slow_reader(&target, args.slow_mib, pid);
            let verdict = r.verdict.clone();
            *run.borrow_mut() = Some(r);
            verdict
        };
        if chosen("slow-reader") {
            step("slow-reader", &mut server, &slow);
        }
        if chosen("memory") {
            step("memory", &mut server, &|| {
                if run.borrow().is_none() {
                    let _ = slow();
                }
                checks::memory(run.borrow().as_ref().expect("the slow reader ran"))
            });
        }
    }
    if let Some(pid) = pid.filter(|_| chosen("idle-cpu")) {
        step("idle-cpu", &mut server, &|| checks::idle_cpu(&target, pid));
    }
    if let Some(server) = server.take() {
        let verdict = Ok(stop_report(server));
        SERVER_GROUP.store(0, Ordering::SeqCst);
        if chosen("sigint") {
            if !args.json {
                print_line("sigint", &verdict, true);
            }
            lines.push(Line {
                check: "sigint",
                verdict,
                informational: true,
            });
        }
    }
    Ok(lines)
}

/// The process group of the started server, for the signal handler.
static SERVER_GROUP: AtomicI32 = AtomicI32::new(0);

/// If this program is interrupted (Ctrl-C, SIGTERM), it kills the started server's process
/// group on the way out: the kernel's PR_SET_PDEATHSIG reaches the server alone, not the
/// workers it forked, and Ctrl-C no longer reaches them either, in a group of their own.
fn stop_with_us(group: nix::unistd::Pid) {
    extern "C" fn on_signal(signal: i32) {
        // Only async-signal-safe calls: kill, sigaction, raise.
        let group = SERVER_GROUP.load(Ordering::SeqCst);
        if group > 0 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), Signal::SIGKILL);
        }
        if let Ok(signal) = Signal::try_from(signal) {
            let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
            // SAFETY: restores the default disposition, then dies of the signal as if unhandled.
            unsafe {
                let _ = sigaction(signal, &default);
            }
            let _ = nix::sys::signal::raise(signal);
        }
    }
    SERVER_GROUP.store(group.as_raw(), Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler makes only async-signal-safe calls.
        unsafe {
            let _ = sigaction(signal, &action);
        }
    }
}

/// Stops a started server with SIGINT (SIGKILL after 5 s) and says how it went.
fn stop_report(mut server: Server) -> String {
    if let Some(status) = server.exited_within(Duration::ZERO) {
        return format!("not sent: the server had already exited ({status})");
    }
    let stopped = server.stop(Signal::SIGINT, Duration::from_secs(5));
    let took = format!("{:.0} ms", stopped.took.as_secs_f64() * 1000.0);
    if stopped.killed {
        return "still running 5 s after SIGINT: killed with SIGKILL".to_owned();
    }
    let said = match summary_line(&stopped.stderr) {
        Some(summary) => format!(", summary: {summary}"),
        None if stopped.stderr.contains("KeyboardInterrupt") => {
            ", with a KeyboardInterrupt traceback (catch it for a clean stop)".to_owned()
        }
        None => ", no summary on stderr".to_owned(),
    };
    match stopped.status.code() {
        Some(0) => format!("exit status 0 after {took}{said}"),
        Some(code) => format!("exit status {code} after {took}{said}"),
        None => format!("killed by the signal after {took} (no handler){said}"),
    }
}

fn print_line(check: &str, verdict: &Verdict, informational: bool) {
    match verdict {
        Ok(figure) if informational => println!("· {check:<12} {figure}"),
        Ok(figure) => println!("✓ {check:<12} {figure}"),
        Err(Failure { detail, hint }) => {
            println!("✗ {check:<12} {detail}");
            println!("  {:<12} hint: {hint}", "");
        }
    }
}

fn report(args: &Args, lines: &[Line]) {
    if args.json {
        let objects: Vec<String> = lines
            .iter()
            .map(|l| {
                let (passed, detail, hint) = match &l.verdict {
                    Ok(figure) => (true, figure.as_str(), ""),
                    Err(f) => (false, f.detail.as_str(), f.hint.as_str()),
                };
                format!(
                    "{{\"check\": {}, \"passed\": {passed}, \"detail\": {}, \"hint\": {}}}",
                    json_string(l.check),
                    json_string(detail),
                    json_string(hint)
                )
            })
            .collect();
        println!("[\n  {}\n]", objects.join(",\n  "));
        return;
    }
    let graded: Vec<&Line> = lines.iter().filter(|l| !l.informational).collect();
    let passed = graded.iter().filter(|l| l.verdict.is_ok()).count();
    if args.spawn.is_none() && args.only.is_empty() {
        println!(
            "  ({} need the server's process: let the checker start it with --spawn CMD)",
            NEED_PROCESS.join(", ")
        );
    }
    println!("{passed} of {} checks passed", graded.len());
}
