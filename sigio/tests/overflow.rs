//! The signal queue is bounded (RLIMIT_SIGPENDING). When it is full the kernel drops the
//! real-time signal and sends a plain SIGIO that names no descriptor; the server must then try
//! every socket. Here the limit is 4 and 100 clients send at once: most of their signals are
//! lost, and every client must still get its whole reply.

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use conformance::{PATIENCE, Server, read_exactly, round_trip, upper};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const CLIENTS: usize = 100;

/// Is `signal` pending for the whole process (not yet taken)? From ShdPnd in /proc/PID/status.
fn pending(pid: Pid, signal: Signal) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .expect("ShdPnd in status");
    let mask = u64::from_str_radix(mask.trim(), 16).expect("hex mask");
    mask & (1 << (signal as u32 - 1)) != 0
}

#[test]
fn queue_overflow_rescans_and_serves_everyone() {
    let _turn = conformance::heavy_lock();
    let (_, hard) = getrlimit(Resource::RLIMIT_SIGPENDING).expect("getrlimit");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigio"));
    cmd.arg("127.0.0.1:0");
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; setrlimit is one.
    unsafe {
        cmd.pre_exec(move || {
            setrlimit(Resource::RLIMIT_SIGPENDING, 4, hard).map_err(io::Error::from)
        });
    }
    let server = Server::spawn(cmd);
    let pid = server.pid();
    let mut clients = conformance::connect_many(&server, CLIENTS);
    // One round trip each: every client is accepted and armed before the flood.
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("hello {i}");
        assert_eq!(round_trip(c, msg.as_bytes()), upper(msg.as_bytes()));
    }

    // Freeze the server, as a long stretch of work would, so that the signals pile up.
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let msgs: Vec<String> = (0..CLIENTS)
        .map(|i| format!("client {i} sends while the server is stopped\n"))
        .collect();
    for (c, msg) in clients.iter_mut().zip(&msgs) {
        c.write_all(msg.as_bytes()).expect("write");
    }
    // The kernel has run out of queue: SIGIO is pending. (A wait on a condition, not a timing.)
    let deadline = Instant::now() + PATIENCE;
    while !pending(pid, Signal::SIGIO) {
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGCONT);
            panic!("no SIGIO pending after {CLIENTS} clients sent with RLIMIT_SIGPENDING = 4");
        }
        thread::sleep(Duration::from_millis(5));
    }
    kill(pid, Signal::SIGCONT).expect("SIGCONT");

    for (i, (c, msg)) in clients.iter_mut().zip(&msgs).enumerate() {
        assert_eq!(
            read_exactly(c, msg.len()),
            upper(msg.as_bytes()),
            "client {i}"
        );
    }
    let stopped = server.interrupt();
    assert!(
        stopped.status.success(),
        "{:?}\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("stopped by SIGINT"),
        "{}",
        stopped.stderr
    );
    let overflows: u64 = stopped
        .stderr
        .split(", ")
        .find_map(|part| part.strip_suffix(" queue overflows (SIGIO) / rescans"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overflow count in the summary:\n{}", stopped.stderr));
    assert!(overflows >= 1, "no rescan counted:\n{}", stopped.stderr);
}
