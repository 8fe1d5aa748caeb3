//! The bench binary from outside: its JSON, and one short load run against a real server.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

fn run(args: &[&str]) -> String {
    let out = Command::new(BENCH).args(args).output().expect("run bench");
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn readiness_json_has_a_positive_number_in_every_cell() {
    let text = run(&["readiness", "--json", "--ops", "1000"]);
    let json = serde_json::from_str::<serde_json::Value>(&text)
        .unwrap_or_else(|e| panic!("{e} in {text}"));
    let rows = json
        .get("rows")
        .and_then(serde_json::Value::as_array)
        .expect("rows");
    let ns: Vec<f64> = rows
        .iter()
        .map(|r| r.get("n").and_then(serde_json::Value::as_f64).expect("n"))
        .collect();
    assert_eq!(ns, [10.0, 100.0, 1000.0, 10000.0]);
    for row in rows {
        for model in ["select", "poll", "epoll"] {
            let secs = row.get(model).and_then(serde_json::Value::as_f64);
            assert!(
                secs.is_some_and(|s| s > 0.0 && s.is_finite()),
                "{model} in {row:?}"
            );
        }
    }
}

/// The select server beside bench: target/debug/select in a `cargo test` build.
fn select_dir() -> PathBuf {
    server_dir("select")
}

/// The directory holding bench and the server `name` (target/debug in a `cargo test` build).
/// The server is built here if this crate's tests run on their own (`cargo test -p bench`
/// builds only bench).
fn server_dir(name: &str) -> PathBuf {
    let dir = Path::new(BENCH).parent().expect("target dir").to_path_buf();
    if !dir.join(name).is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p {name} failed");
    }
    assert!(dir.join(name).is_file(), "no {name} binary in {dir:?}");
    dir
}

/// Runs bench, which must fail, and returns what it said on stderr (but the warning that a
/// debug build measures badly).
fn fails(args: &[&str]) -> String {
    let out = Command::new(BENCH).args(args).output().expect("run bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "bench {args:?} succeeded: {stderr}");
    let said = stderr.lines().filter(|l| !l.contains("debug build"));
    said.map(|l| format!("{l}\n")).collect()
}

#[test]
fn load_against_select_reports_what_it_measured() {
    let dir = select_dir();
    let text = run(&[
        "load",
        "--server",
        "select",
        "--bin-dir",
        dir.to_str().unwrap(),
        "--conns",
        "2",
        "--idle",
        "20",
        "--secs",
        "1",
        "--idle-secs",
        "0.2",
        "--json",
    ]);
    let json = serde_json::from_str::<serde_json::Value>(&text)
        .unwrap_or_else(|e| panic!("{e} in {text}"));
    let num = |k: &str| {
        json.get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("no number {k} in {text}"))
    };
    assert!(num("round_trips_per_sec") > 0.0, "{text}");
    assert!(
        num("p50_us") > 0.0 && num("p99_us") >= num("p50_us"),
        "{text}"
    );
    assert!(num("server_cpu_s") >= 0.0, "{text}");
    assert!(num("server_rss_kib") > 0.0, "{text}");
    assert_eq!(num("server_threads"), 1.0, "select is one thread: {text}");
    assert_eq!(num("idle"), 20.0);
    // The server saw every connection: 20 idle + 2 active.
    let summary = json
        .get("server_summary")
        .and_then(serde_json::Value::as_str)
        .unwrap();
    assert!(summary.starts_with("22 connections"), "{summary}");
}

/// Whether strace is installed; if not, says so where `cargo test` shows it (a direct write
/// to stderr, which the test harness does not capture), so that a skip is never silent.
fn have_strace(test: &str) -> bool {
    let found = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: strace is not installed (apt-get install strace)"
        );
    }
    found
}

/// `bench syscalls` on select: strace counts one recvfrom and one sendto per round trip, plus
/// the waits, and the server's own count agrees with strace's.
#[test]
fn syscalls_of_select_agree_with_strace() {
    if !have_strace("syscalls_of_select_agree_with_strace") {
        return;
    }
    let dir = select_dir();
    let text = run(&[
        "syscalls",
        "--only",
        "select",
        "--bin-dir",
        dir.to_str().unwrap(),
        "--round-trips",
        "300",
        "--idle",
        "20",
        "--json",
    ]);
    let json = parse(&text);
    let rows = json.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{text}");
    let row = &rows[0];
    let num = |k: &str| {
        row.get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    assert_eq!(num("round_trips"), 1200.0, "{text}");
    let per = num("per_round_trip");
    assert!(
        (2.0..4.0).contains(&per),
        "select per round trip: {per} in {text}"
    );
    let calls = row.get("calls").expect("calls");
    let call = |k: &str| {
        calls
            .get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
    };
    // One read and one write per round trip. The count is the session's less the same session
    // without round trips, so the end-of-file and would-block reads of the 24 connections may
    // differ by about one per connection either way.
    let about_one_each = |n: f64| (n - 1200.0).abs() <= 24.0;
    assert!(about_one_each(call("recvfrom") + call("read")), "{text}");
    assert!(about_one_each(call("sendto") + call("write")), "{text}");
    let (own, traced) = (num("server_count"), num("strace_count"));
    assert!(
        (own - traced).abs() <= 0.05 * own.max(traced) + 20.0,
        "{text}"
    );
}

#[test]
fn syscalls_without_strace_says_how_to_install_it() {
    let out = Command::new(BENCH)
        .args(["syscalls", "--only", "select"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("run bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install strace"), "{stderr}");
}

#[test]
fn a_missing_server_says_how_to_build_it() {
    let stderr = fails(&["load", "--server", "select", "--bin-dir", "/nonexistent"]);
    assert!(
        stderr.contains("cargo build --release --workspace"),
        "{stderr}"
    );
}

fn parse(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e} in {text}"))
}

/// The book's Python select server, started by bench: measured with CPU and RSS like ours.
#[test]
fn load_spawns_any_server() {
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/select_server.py");
    let cmd = format!("python3 {} {{port}}", server.display());
    let text = run(&[
        "load",
        "--spawn",
        &cmd,
        "--conns",
        "2",
        "--idle",
        "10",
        "--secs",
        "0.5",
        "--idle-secs",
        "0.2",
        "--json",
    ]);
    let json = parse(&text);
    let num = |k: &str| {
        json[k]
            .as_f64()
            .unwrap_or_else(|| panic!("no {k} in {text}"))
    };
    assert!(num("round_trips_per_sec") > 0.0, "{text}");
    assert!(num("server_rss_kib") > 0.0, "{text}");
    assert!(num("server_cpu_s") >= 0.0, "{text}");
    assert_eq!(num("server_threads"), 1.0, "{text}");
    assert_eq!(json["server"].as_str(), Some(cmd.as_str()));
    // 2 active + 10 idle, and the probe that found the port open when it came before the
    // server's `listening on` line was read.
    let summary = json["server_summary"].as_str();
    assert!(
        matches!(summary, Some("12 connections" | "13 connections")),
        "{text}"
    );
}

/// A server already running: round trips always; CPU and RSS only with --pid.
#[test]
fn load_measures_a_running_server_at_addr() {
    let dir = select_dir();
    let server = conformance::Server::start(dir.join("select").to_str().unwrap(), &[]);
    let addr = server.addr.to_string();
    let base = [
        "load", "--addr", &addr, "--conns", "2", "--idle", "5", "--secs", "0.3",
    ];
    let text = run(&[&base[..], &["--json"]].concat());
    let json = parse(&text);
    assert!(
        json["round_trips_per_sec"].as_f64().unwrap() > 0.0,
        "{text}"
    );
    for unknown in ["server_rss_kib", "server_cpu_s", "server_threads"] {
        assert!(json[unknown].is_null(), "{unknown} without --pid: {text}");
    }
    let pid = server.pid().to_string();
    let text = run(&[&base[..], &["--json", "--pid", &pid]].concat());
    let json = parse(&text);
    assert!(json["server_rss_kib"].as_f64().unwrap() > 0.0, "{text}");
    assert_eq!(json["server_threads"].as_f64(), Some(1.0), "{text}");
    // The server was not ours to stop: it still serves.
    let mut c = server.connect();
    assert_eq!(conformance::round_trip(&mut c, b"still?"), b"STILL?");
}

#[test]
fn an_unknown_server_gets_the_list_of_names() {
    let stderr = fails(&["load", "--server", "nosuch", "--secs", "0.1"]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for name in ["blocking", "select", "epoll", "aio", "selectors-chat"] {
        assert!(stderr.contains(name), "{name} not named: {stderr}");
    }
    assert!(!stderr.contains("cargo build"), "{stderr}");
}

/// blocking's thread mode refuses clients past --max-clients (1000): `bench load` with more
/// idle connections than that raises the limit for the run instead of failing with a refusal
/// line per extra connection. Where the limit is the model (the pool's workers) or the user's
/// (a --max-clients given), the run stops before it starts, with one line of advice.
#[test]
fn load_makes_room_in_blocking_or_says_why_not() {
    let dir = server_dir("blocking");
    let load = [
        "load", "--server", "blocking", "--conns", "1", "--secs", "0.2",
    ];
    let load = [
        &load[..],
        &["--idle-secs", "0", "--bin-dir", dir.to_str().unwrap()],
    ]
    .concat();
    let with = |server_args: &'static str, idle: &'static str| {
        [&load[..], &["--server-args", server_args, "--idle", idle]].concat()
    };
    for (server_args, advice) in [
        ("--mode thread --max-clients 5", "--max-clients 5"),
        ("--mode pool", "--workers 11"),
        ("--mode single", "--mode thread"),
    ] {
        let stderr = fails(&with(server_args, "10"));
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(advice), "{server_args}: {stderr}");
    }
    let text = run(&[&with("--mode thread", "1000")[..], &["--json"]].concat());
    let json = parse(&text);
    let summary = json["server_summary"].as_str().unwrap();
    assert!(summary.starts_with("1001 connections"), "{summary}");
    assert!(summary.contains("0 refused"), "{summary}");
}

/// A few seconds of `bench soak` against one server: every reply verified, and the line that
/// reports it.
#[test]
fn soak_smoke() {
    let dir = select_dir();
    let text = run(&[
        "soak",
        "--server",
        "select",
        "--seconds",
        "3",
        "--clients",
        "3",
        "--bin-dir",
        dir.to_str().unwrap(),
    ]);
    let line = text
        .lines()
        .find(|l| l.starts_with("select"))
        .unwrap_or_else(|| panic!("no line for select: {text}"));
    assert!(line.contains(" ok: "), "{line}");
    assert!(line.contains("MiB verified, 0 problems"), "{line}");
    assert!(
        line.contains("fds ") && line.contains("stopped cleanly"),
        "{line}"
    );
}

#[test]
fn load_names_what_is_missing() {
    for (args, says) in [
        (&["load"][..], "--server NAME, --spawn CMD or --addr ADDR"),
        (
            &["load", "--server", "select", "--pid", "1"],
            "--pid goes with --addr",
        ),
        (&["load", "--addr", "127.0.0.1:1"], "nothing is listening"),
        (
            &["load", "--spawn", "no-such-program-for-bench {port}"],
            "cannot start",
        ),
    ] {
        let out = Command::new(BENCH).args(args).output().expect("run bench");
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
