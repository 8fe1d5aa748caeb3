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
    let json = json::parse(&text).unwrap_or_else(|e| panic!("{e} in {text}"));
    let rows = json
        .get("rows")
        .and_then(json::Value::as_array)
        .expect("rows");
    let ns: Vec<f64> = rows
        .iter()
        .map(|r| r.get("n").and_then(json::Value::as_f64).expect("n"))
        .collect();
    assert_eq!(ns, [10.0, 100.0, 1000.0, 10000.0]);
    for row in rows {
        for model in ["select", "poll", "epoll"] {
            let secs = row.get(model).and_then(json::Value::as_f64);
            assert!(
                secs.is_some_and(|s| s > 0.0 && s.is_finite()),
                "{model} in {row:?}"
            );
        }
    }
}

/// The select server beside bench: target/debug/select in a `cargo test` build. Built here if
/// this crate's tests run on their own (`cargo test -p bench` builds only bench).
fn select_dir() -> PathBuf {
    let dir = Path::new(BENCH).parent().expect("target dir").to_path_buf();
    if !dir.join("select").is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "select"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p select");
        assert!(status.success(), "cargo build -p select failed");
    }
    assert!(dir.join("select").is_file(), "no select binary in {dir:?}");
    dir
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
    let json = json::parse(&text).unwrap_or_else(|e| panic!("{e} in {text}"));
    let num = |k: &str| {
        json.get(k)
            .and_then(json::Value::as_f64)
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
        .and_then(json::Value::as_str)
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
    let json = json::parse(&text).unwrap_or_else(|e| panic!("{e} in {text}"));
    let rows = json.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{text}");
    let row = &rows[0];
    let num = |k: &str| row.get(k).and_then(json::Value::as_f64).unwrap_or(f64::NAN);
    assert_eq!(num("round_trips"), 1200.0, "{text}");
    let per = num("per_round_trip");
    assert!(
        (2.0..4.0).contains(&per),
        "select per round trip: {per} in {text}"
    );
    let calls = row.get("calls").expect("calls");
    let call = |k: &str| calls.get(k).and_then(json::Value::as_f64).unwrap_or(0.0);
    assert!(call("recvfrom") + call("read") >= 1200.0, "{text}");
    assert!(call("sendto") + call("write") >= 1200.0, "{text}");
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
    let out = Command::new(BENCH)
        .args(["load", "--server", "no-such-server", "--secs", "0.1"])
        .output()
        .expect("run bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cargo build --release --workspace"),
        "{stderr}"
    );
}

/// Just enough JSON to check bench's output: objects, arrays, strings, numbers, literals.
mod json {
    #[derive(Debug, Clone)]
    pub enum Value {
        Null,
        Bool,
        Number(f64),
        Str(String),
        Array(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    impl Value {
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }
        pub fn as_f64(&self) -> Option<f64> {
            match self {
                Value::Number(n) => Some(*n),
                _ => None,
            }
        }
        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::Str(s) => Some(s),
                _ => None,
            }
        }
        pub fn as_array(&self) -> Option<&Vec<Value>> {
            match self {
                Value::Array(a) => Some(a),
                _ => None,
            }
        }
    }

    pub fn parse(text: &str) -> Result<Value, String> {
        let mut p = Parser(text.trim().as_bytes(), 0);
        let v = p.value()?;
        if p.1 != p.0.len() {
            return Err(format!("trailing text at byte {}", p.1));
        }
        Ok(v)
    }

    struct Parser<'a>(&'a [u8], usize);

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.1 < self.0.len() && self.0[self.1].is_ascii_whitespace() {
                self.1 += 1;
            }
        }
        fn eat(&mut self, c: u8) -> Result<(), String> {
            self.ws();
            if self.0.get(self.1) == Some(&c) {
                self.1 += 1;
                Ok(())
            } else {
                Err(format!("expected {:?} at byte {}", c as char, self.1))
            }
        }
        fn value(&mut self) -> Result<Value, String> {
            self.ws();
            match self.0.get(self.1) {
                Some(b'{') => {
                    self.1 += 1;
                    let mut fields = Vec::new();
                    self.ws();
                    if self.0.get(self.1) == Some(&b'}') {
                        self.1 += 1;
                        return Ok(Value::Object(fields));
                    }
                    loop {
                        self.ws();
                        let Value::Str(k) = self.value()? else {
                            return Err(format!("key expected at byte {}", self.1));
                        };
                        self.eat(b':')?;
                        fields.push((k, self.value()?));
                        self.ws();
                        match self.0.get(self.1) {
                            Some(b',') => self.1 += 1,
                            Some(b'}') => {
                                self.1 += 1;
                                return Ok(Value::Object(fields));
                            }
                            _ => return Err(format!("',' or '}}' expected at byte {}", self.1)),
                        }
                    }
                }
                Some(b'[') => {
                    self.1 += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if self.0.get(self.1) == Some(&b']') {
                        self.1 += 1;
                        return Ok(Value::Array(items));
                    }
                    loop {
                        items.push(self.value()?);
                        self.ws();
                        match self.0.get(self.1) {
                            Some(b',') => self.1 += 1,
                            Some(b']') => {
                                self.1 += 1;
                                return Ok(Value::Array(items));
                            }
                            _ => return Err(format!("',' or ']' expected at byte {}", self.1)),
                        }
                    }
                }
                Some(b'"') => {
                    self.1 += 1;
                    let mut s = String::new();
                    let mut chars = std::str::from_utf8(&self.0[self.1..])
                        .map_err(|e| e.to_string())?
                        .char_indices();
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '"' => {
                                self.1 += i + 1;
                                return Ok(Value::Str(s));
                            }
                            '\\' => match chars.next().map(|(_, c)| c) {
                                Some('n') => s.push('\n'),
                                Some('u') => {
                                    let hex: String = (0..4)
                                        .filter_map(|_| chars.next())
                                        .map(|(_, c)| c)
                                        .collect();
                                    let code =
                                        u32::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
                                    s.push(char::from_u32(code).unwrap_or('?'));
                                }
                                Some(c) => s.push(c),
                                None => break,
                            },
                            c => s.push(c),
                        }
                    }
                    Err("unterminated string".into())
                }
                Some(_) => {
                    let start = self.1;
                    while self.1 < self.0.len() && !b",]} \n\t\r".contains(&self.0[self.1]) {
                        self.1 += 1;
                    }
                    match &self.0[start..self.1] {
                        b"null" => Ok(Value::Null),
                        b"true" | b"false" => Ok(Value::Bool),
                        num => std::str::from_utf8(num)
                            .ok()
                            .and_then(|n| n.parse().ok())
                            .map(Value::Number)
                            .ok_or_else(|| format!("bad value at byte {start}")),
                    }
                }
                None => Err("unexpected end".into()),
            }
        }
    }

    #[test]
    fn parses_what_bench_prints() {
        let v = parse(r#"{"a": [1, 2.5e3, -0.5], "b": "x\"y", "c": null, "d": {}}"#).unwrap();
        assert_eq!(
            v.get("a").unwrap().as_array().unwrap()[1].as_f64(),
            Some(2500.0)
        );
        assert_eq!(v.get("b").unwrap().as_str(), Some("x\"y"));
        assert!(parse("{\"a\": }").is_err());
        assert!(parse("[1, 2").is_err());
    }
}
