//! The checker binary (`cargo run -p conformance`), run the way a student runs it: against
//! every server of this workspace (they all pass), against Python servers written in other
//! styles, and against deliberately broken ones (tests/servers/broken.py), each of which must
//! fail on the check that names its fault, with the right hint.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use conformance::checks::{
    HINT_BLOCKING_SEND, HINT_BUSY, HINT_CHANGED, HINT_CONCURRENT, HINT_COUNT_IGNORED, HINT_DIED,
    HINT_EOF, HINT_MEMORY, HINT_NO_REPLY, HINT_PLAIN, HINT_RESETS, HINT_TOO_SLOW, HINT_UPPER,
};

const CHECKER: &str = env!("CARGO_BIN_EXE_conformance");

/// Checker runs take turns: each loads both cores for a few seconds, and the slow-reader
/// check's promptness bound should measure the server, not the other runs.
fn turn() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn script(relative: &str) -> String {
    conformance::workspace()
        .join(relative)
        .display()
        .to_string()
}

fn broken(fault: &str) -> String {
    format!(
        "python3 {} {{port}} {fault}",
        script("conformance/tests/servers/broken.py")
    )
}

/// Runs the checker to its end.
fn checker(args: &[&str]) -> Output {
    let _turn = turn();
    Command::new(CHECKER)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the checker")
}

/// One check's object in the --json output.
#[derive(Debug)]
struct Graded {
    check: String,
    passed: bool,
    detail: String,
    hint: String,
}

/// Runs the checker with --json and reads its array.
fn graded(args: &[&str]) -> (i32, Vec<Graded>) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = checker(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let text = |v: &serde_json::Value, key: &str| v[key].as_str().expect(key).to_owned();
    let lines = json
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| Graded {
            check: text(v, "check"),
            passed: v["passed"].as_bool().expect("passed"),
            detail: text(v, "detail"),
            hint: text(v, "hint"),
        })
        .collect();
    (out.status.code().expect("an exit status"), lines)
}

/// The checks that failed.
fn failed(lines: &[Graded]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| !l.passed)
        .map(|l| l.check.as_str())
        .collect()
}

fn line<'a>(lines: &'a [Graded], check: &str) -> &'a Graded {
    lines
        .iter()
        .find(|l| l.check == check)
        .unwrap_or_else(|| panic!("no {check} in {lines:?}"))
}

/// Asserts that exactly `want` failed, `check` with `hint`.
fn assert_caught(lines: &[Graded], want: &[&str], check: &str, hint: &str) {
    assert_eq!(failed(lines), want, "{lines:#?}");
    let l = line(lines, check);
    assert_eq!(l.hint, hint, "{check} failed with the wrong hint: {l:#?}");
}

/// Runs the checker on broken.py with `fault`, and asserts that exactly `failing` failed, the
/// first of them with `hint`.
fn caught(fault: &str, extra: &[&str], failing: &[&str], hint: &str) -> Vec<Graded> {
    let cmd = broken(fault);
    let (code, lines) = graded(&[&["--spawn", cmd.as_str()], extra].concat());
    assert_caught(&lines, failing, failing[0], hint);
    assert_eq!(code, 1);
    lines
}

// ---------------------------------------------------------------------------------------------
// Every server of this workspace passes.

/// A workspace binary, as a path in a command line.
fn binary(name: &str) -> String {
    conformance::binary(name).display().to_string()
}

fn workspace_server_passes(name: &str, args: &str) {
    let cmd = format!("{} {args} 127.0.0.1:{{port}}", binary(name));
    let (code, lines) = graded(&["--spawn", &cmd]);
    assert_eq!(failed(&lines), Vec::<&str>::new(), "{cmd}: {lines:#?}");
    assert_eq!(lines.len(), 9, "{lines:#?}");
    assert!(
        line(&lines, "sigint").detail.contains("exit status 0"),
        "{lines:#?}"
    );
    assert_eq!(code, 0);
}

#[test]
fn blocking_thread_mode_passes() {
    workspace_server_passes("blocking", "--mode thread");
}

#[test]
fn select_passes() {
    workspace_server_passes("select", "");
}

#[test]
fn poll_passes() {
    workspace_server_passes("poll", "");
}

#[test]
fn epoll_level_passes() {
    workspace_server_passes("epoll", "");
}

#[test]
fn epoll_edge_passes() {
    workspace_server_passes("epoll", "--edge");
}

#[test]
fn sigio_passes() {
    workspace_server_passes("sigio", "");
}

#[test]
fn aio_uring_passes() {
    workspace_server_passes("aio", "--backend uring");
}

#[test]
fn aio_posix_passes() {
    // One helper thread per client that waits: the 200 concurrent clients and 100 idle ones.
    workspace_server_passes("aio", "--backend posix --threads 400");
}

#[test]
fn selectors_echo_passes() {
    workspace_server_passes("selectors-chat", "--echo");
}

/// The busy-polling server passes everything but the one check its lesson is about.
#[test]
fn nonblocking_passes_all_but_idle_cpu() {
    let cmd = format!("{} 127.0.0.1:{{port}}", binary("nonblocking"));
    let (code, lines) = graded(&["--spawn", &cmd]);
    assert_caught(&lines, &["idle-cpu"], "idle-cpu", HINT_BUSY);
    assert_eq!(code, 1);
}

/// The iterative server serves one client at a time by design: the concurrent check says so.
#[test]
fn blocking_single_mode_fails_concurrent() {
    let cmd = format!("{} --mode single 127.0.0.1:{{port}}", binary("blocking"));
    let (code, lines) = graded(&[
        "--spawn",
        &cmd,
        "--only",
        "hello,concurrent",
        "--timeout",
        "2",
    ]);
    assert_caught(&lines, &["concurrent"], "concurrent", HINT_CONCURRENT);
    assert_eq!(code, 1);
}

// ---------------------------------------------------------------------------------------------
// Python servers: the book's, other styles, and one fault each.

#[test]
fn the_books_python_select_server_passes() {
    let cmd = format!(
        "python3 {} {{port}}",
        script("docs/examples/select_server.py")
    );
    let (code, lines) = graded(&["--spawn", &cmd]);
    assert_eq!(failed(&lines), Vec::<&str>::new(), "{lines:#?}");
    assert_eq!(lines.len(), 9);
    assert_eq!(code, 0);
}

#[test]
fn the_lectures_select_server_stalls_everyone_on_a_slow_reader() {
    let cmd = format!(
        "python3 {} {{port}}",
        script("docs/examples/lecture_select.py")
    );
    let (code, lines) = graded(&["--spawn", &cmd, "--only", "hello,slow-reader,memory"]);
    assert_caught(&lines, &["slow-reader"], "slow-reader", HINT_BLOCKING_SEND);
    assert_eq!(code, 1);
}

#[test]
fn a_threaded_socketserver_passes_as_a_plain_echo() {
    let cmd = format!(
        "python3 {} {{port}}",
        script("conformance/tests/servers/threaded_echo.py")
    );
    let (code, lines) = graded(&["--plain", "--spawn", &cmd]);
    assert_eq!(failed(&lines), Vec::<&str>::new(), "{lines:#?}");
    assert_eq!(code, 0);
    // Without --plain, the hint says what to do.
    let (code, lines) = graded(&["--spawn", &cmd, "--only", "hello"]);
    assert_caught(&lines, &["hello"], "hello", HINT_UPPER);
    assert_eq!(code, 1);
}

#[test]
fn an_upper_casing_server_under_plain_is_told_to_drop_it() {
    let (_, lines) = graded(&["--plain", "--spawn", &broken("none"), "--only", "hello"]);
    assert_caught(&lines, &["hello"], "hello", HINT_PLAIN);
}

#[test]
fn one_at_a_time_socketserver_fails_concurrent() {
    let cmd = format!(
        "python3 {} {{port}} --one-at-a-time",
        script("conformance/tests/servers/threaded_echo.py")
    );
    let (_, lines) = graded(&[
        "--plain",
        "--spawn",
        &cmd,
        "--only",
        "hello,concurrent",
        "--timeout",
        "2",
    ]);
    assert_caught(&lines, &["concurrent"], "concurrent", HINT_CONCURRENT);
}

#[test]
fn forgetting_upper_case_fails_hello() {
    caught("forget-upper", &["--only", "hello"], &["hello"], HINT_UPPER);
}

#[test]
fn upper_casing_decoded_text_fails_binary() {
    caught("latin1", &["--clients", "20"], &["binary"], HINT_CHANGED);
}

#[test]
fn dropping_what_is_owed_at_eof_fails_half_close() {
    let only = ["--only", "hello,half-close"];
    caught("drop-at-eof", &only, &["half-close"], HINT_EOF);
}

/// The same mistake in a server that sends at once what it reads: small replies are all sent
/// before the end-of-file is read, so only a reader far behind shows it, and the slow-reader
/// check names the half-close mistake, not a lost send count.
#[test]
fn dropping_what_is_owed_at_eof_late_fails_slow_reader_with_the_half_close_hint() {
    let only = ["--only", "hello,half-close,slow-reader"];
    caught("drop-at-eof-late", &only, &["slow-reader"], HINT_EOF);
}

#[test]
fn dying_on_a_reset_fails_resets_and_says_so() {
    let only = ["--only", "hello,resets,concurrent"];
    let lines = caught(
        "die-on-reset",
        &only,
        &["resets", "concurrent"],
        HINT_RESETS,
    );
    assert!(line(&lines, "resets").detail.contains("the server exited"));
    assert!(line(&lines, "concurrent").detail.contains("not run"));
}

/// A server that dies in the middle of a check is not blamed for that check's usual fault (one
/// client at a time, here): the hint says it died.
#[test]
fn dying_in_a_check_is_hinted_as_dying_not_as_that_checks_fault() {
    let only = ["--only", "hello,concurrent,slow-reader"];
    let lines = caught(
        "die-at-100",
        &only,
        &["concurrent", "slow-reader"],
        HINT_DIED,
    );
    let concurrent = line(&lines, "concurrent");
    assert!(
        concurrent.detail.contains("connection 100: a bug"),
        "{concurrent:#?}"
    );
}

/// A server that accepts and never reads is told so by every check, not blamed for lost bytes,
/// resets or a blocking send it never made.
#[test]
fn a_server_that_never_reads_gets_no_reply_hints() {
    let checks = ["hello", "binary", "resets", "slow-reader"];
    let only = ["--only", &checks.join(","), "--timeout", "2"];
    let lines = caught("deaf", &only, &checks, HINT_NO_REPLY);
    for l in &lines {
        assert_eq!(l.hint, HINT_NO_REPLY, "{l:#?}");
    }
}

/// A correct server that reads a byte at a time cannot take the slow reader's megabytes in
/// time: it is told it is slow, not accused of losing the bytes it was never sent.
#[test]
fn a_slow_but_correct_server_is_not_accused_of_losing_bytes() {
    let only = ["--only", "slow-reader", "--timeout", "2"];
    let lines = caught("one-byte", &only, &["slow-reader"], HINT_TOO_SLOW);
    assert!(
        line(&lines, "slow-reader")
            .detail
            .contains("every byte of it came back")
    );
}

#[test]
fn a_blocking_send_fails_slow_reader_as_stalling_everyone() {
    let clients = ["--clients", "20"];
    caught(
        "block-in-send",
        &clients,
        &["slow-reader"],
        HINT_BLOCKING_SEND,
    );
}

#[test]
fn an_ignored_send_count_fails_slow_reader_as_bytes_lost() {
    let clients = ["--clients", "20"];
    caught(
        "ignore-count",
        &clients,
        &["slow-reader"],
        HINT_COUNT_IGNORED,
    );
}

#[test]
fn no_back_pressure_fails_memory() {
    let only = ["--only", "slow-reader,memory"];
    caught("unbounded", &only, &["memory"], HINT_MEMORY);
}

#[test]
fn a_busy_loop_fails_idle_cpu() {
    caught(
        "busy",
        &["--only", "hello,idle-cpu"],
        &["idle-cpu"],
        HINT_BUSY,
    );
}

/// A pre-forking server whose worker spins: the CPU of every process the server started counts,
/// not only its own.
#[test]
fn a_busy_worker_fails_idle_cpu() {
    caught(
        "busy-worker+fork",
        &["--only", "hello,idle-cpu"],
        &["idle-cpu"],
        HINT_BUSY,
    );
}

/// A server deaf to SIGINT is killed after the grace period, and the report says so.
#[test]
fn a_server_deaf_to_sigint_is_killed() {
    let pidfile = std::env::temp_dir().join(format!("checker-deaf-{}", std::process::id()));
    let cmd = format!("{} {}", broken("deaf-to-sigint"), pidfile.display());
    let (code, lines) = graded(&["--spawn", &cmd, "--only", "hello,sigint"]);
    assert_eq!(code, 0, "sigint is informational: {lines:#?}");
    assert!(
        line(&lines, "sigint")
            .detail
            .contains("killed with SIGKILL"),
        "{lines:#?}"
    );
    assert_gone(&pidfile);
}

// ---------------------------------------------------------------------------------------------
// The command itself.

/// Waits for the process whose pid is in `pidfile` to be gone.
fn assert_gone(pidfile: &Path) {
    let pid: i32 = std::fs::read_to_string(pidfile)
        .expect("the server wrote its pid")
        .trim()
        .parse()
        .unwrap();
    let _ = std::fs::remove_file(pidfile);
    let deadline = Instant::now() + Duration::from_secs(10);
    // A zombie is gone for our purpose: it runs no more code. Its parent (the checker) reaps it.
    let running = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        conformance::harness::stat_fields(&stat).is_some_and(|f| f[0] != "Z")
    };
    while running() {
        assert!(
            Instant::now() < deadline,
            "the server {pid} is still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the checker on `fault` (a server blocking in send, so that the slow-reader check
/// takes seconds), and returns it once the server has written its pid to `pidfile`.
fn checker_inside_a_long_check(fault: &str, pidfile: &Path) -> std::process::Child {
    let _ = std::fs::remove_file(pidfile);
    let cmd = format!("{} {}", broken(fault), pidfile.display());
    let child = Command::new(CHECKER)
        .args(["--spawn", &cmd, "--only", "slow-reader"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pidfile.exists() {
        assert!(Instant::now() < deadline, "the server never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500)); // well inside the check, not a sync
    child
}

/// However the checker ends, even killed with SIGKILL in the middle of a check, the server it
/// started does not outlive it.
#[test]
fn a_killed_checker_leaves_no_server_running() {
    let _turn = turn();
    let pidfile = std::env::temp_dir().join(format!("checker-killed-{}", std::process::id()));
    let mut child = checker_inside_a_long_check("block-in-send", &pidfile);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_gone(&pidfile);
}

/// What a started server forks (a pre-forking server's workers) is stopped with it: when the
/// checks end, and when the checker is interrupted in the middle of one.
#[test]
fn a_forked_worker_is_stopped_with_its_server() {
    let pidfile = std::env::temp_dir().join(format!("checker-worker-{}", std::process::id()));
    let _ = std::fs::remove_file(&pidfile);
    let cmd = format!("{} {}", broken("none+fork"), pidfile.display());
    let (code, lines) = graded(&["--spawn", &cmd, "--only", "hello,sigint"]);
    assert_eq!(code, 0, "{lines:#?}");
    assert_gone(&pidfile);

    let _turn = turn();
    let mut child = checker_inside_a_long_check("block-in-send+fork", &pidfile);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "interrupted, yet {status}");
    assert_gone(&pidfile);
}

#[test]
fn nothing_listening_exits_2() {
    let port = conformance::harness::free_port().unwrap();
    let out = checker(&[&format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nothing is listening") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn a_command_that_does_not_start_exits_2() {
    for cmd in [
        "no-such-program-for-the-checker {port}",
        "python3 -c 'raise SystemExit(3)'",
        "python3 'unclosed",
    ] {
        let out = checker(&["--spawn", cmd, "--timeout", "2"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("conformance: "), "{cmd}: {stderr}");
    }
}

/// A server that listens somewhere else than on the port it was given, and says nothing, is
/// asked whether it uses that port.
#[test]
fn a_server_on_another_port_is_asked_about_its_port() {
    let elsewhere = "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); \
                     s.listen(); time.sleep(60)";
    let cmd = format!("python3 -c \"{elsewhere}\" {{port}}");
    let out = checker(&["--spawn", &cmd, "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the one its command line gives it?")
            && stderr.trim_end().ends_with("it said nothing on stderr"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["--only", "nonsense"][..],
        &["--only", "idle-cpu"],
        &["--clients", "many"],
        &["not-an-address"],
    ] {
        let out = checker(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn list_names_every_check() {
    let out = checker(&["--list"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in conformance::checks::NAMES {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "{name}:\n{stdout}"
        );
    }
}

/// The readable report: a line per check with ✓ or ✗, the figure, and a hint under a failure.
#[test]
fn the_report_reads() {
    let out = checker(&["--spawn", &broken("forget-upper"), "--only", "hello,binary"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("checking 127.0.0.1:"), "{stdout}");
    assert!(lines[1].starts_with("✗ hello "), "{stdout}");
    assert!(lines[2].trim_start().starts_with("hint: "), "{stdout}");
    assert!(
        lines.last().unwrap().contains("0 of 2 checks passed"),
        "{stdout}"
    );

    let out = checker(&["--spawn", &broken("none"), "--only", "hello"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("✓ hello "), "{stdout}");
    assert!(stdout.contains("1 of 1 checks passed"), "{stdout}");
}
