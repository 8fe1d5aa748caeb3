//! What each blocking mode is there to show, checked from outside.
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use conformance::{Server, round_trip};
use nix::sys::signal::Signal;

const BIN: &str = env!("CARGO_BIN_EXE_blocking");

/// Asserts that `client` gets no reply within a short window. Absence is what is tested, so a
/// timeout is the only way to see it; the window is short because the test does not depend on
/// its length, only on nothing arriving in it.
fn assert_no_reply_yet(client: &mut TcpStream) {
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    match client.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected no reply while the server is busy, got {other:?}"),
    }
    client
        .set_read_timeout(Some(conformance::PATIENCE))
        .unwrap();
}

fn read_reply(client: &mut TcpStream, n: usize) -> Vec<u8> {
    conformance::read_exactly(client, n)
}

#[test]
fn single_makes_the_second_client_wait() {
    let server = Server::start(BIN, &["--mode", "single"]);
    let mut first = server.connect();
    assert_eq!(round_trip(&mut first, b"first"), b"FIRST");
    server.wait_for_stderr("any other client waits");

    // The second client connects (the kernel queues it) but nobody reads what it sends.
    let mut second = server.connect();
    second.write_all(b"second").unwrap();
    assert_no_reply_yet(&mut second);

    drop(first); // the first client leaves...
    assert_eq!(read_reply(&mut second, 6), b"SECOND"); // ...and the second is served
    server.wait_for_stderr("accepting the next");
}

#[test]
fn pool_of_two_makes_the_third_client_wait() {
    let server = Server::start(BIN, &["--mode", "pool", "--workers", "2"]);
    let mut a = server.connect();
    let mut b = server.connect();
    assert_eq!(round_trip(&mut a, b"a"), b"A");
    assert_eq!(round_trip(&mut b, b"b"), b"B");

    let mut c = server.connect();
    c.write_all(b"third").unwrap();
    server.wait_for_stderr("all 2 workers busy");
    assert_no_reply_yet(&mut c);

    drop(a); // a worker frees up and takes the queued client
    assert_eq!(read_reply(&mut c, 5), b"THIRD");
    server.wait_for_stderr("a worker is free: serving");
    assert_eq!(round_trip(&mut b, b"still here"), b"STILL HERE");
}

#[test]
fn pool_queue_is_bounded() {
    let server = Server::start(BIN, &["--mode", "pool", "--workers", "1", "--queue", "1"]);
    let mut a = server.connect();
    assert_eq!(round_trip(&mut a, b"a"), b"A");
    let _queued = server.connect();
    server.wait_for_stderr("waits in the queue");
    let mut refused = server.connect();
    server.wait_for_stderr("refusing");
    // The refused client is closed unserved: it reads EOF.
    assert_eq!(conformance::read_to_eof(&mut refused), b"");
}

#[test]
fn thread_mode_serves_hundreds_at_once() {
    let _turn = conformance::heavy_lock();
    let server = Server::start(BIN, &["--mode", "thread"]);
    let mut clients = conformance::connect_many(&server, 400);
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("client {i}");
        assert_eq!(round_trip(c, msg.as_bytes()), msg.to_uppercase().as_bytes());
    }
    // One thread per client, plus main and the signal thread.
    assert!(conformance::thread_count(server.pid()) >= 400);
}

/// Children of `pid` that are zombies (exited, not yet reaped).
fn zombie_children(pid: nix::unistd::Pid) -> usize {
    let mut zombies = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(fields) = conformance::harness::stat_fields(&stat) else {
            continue;
        };
        if fields.get(1) == Some(&pid.to_string().as_str()) && fields[0] == "Z" {
            zombies += 1;
        }
    }
    zombies
}

#[test]
fn fork_leaves_no_zombies() {
    let server = Server::start(BIN, &["--mode", "fork"]);
    for i in 0..10 {
        let mut c = server.connect();
        let msg = format!("child {i}");
        assert_eq!(
            round_trip(&mut c, msg.as_bytes()),
            msg.to_uppercase().as_bytes()
        );
    }
    // Every child has now exited (its client closed); the parent must reap them all.
    let deadline = std::time::Instant::now() + conformance::PATIENCE;
    while zombie_children(server.pid()) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "zombies were never reaped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = server.interrupt();
    assert!(stopped.status.success());
    assert!(
        stopped.stderr.contains("children reaped"),
        "{}",
        stopped.stderr
    );
}

#[test]
fn fork_stops_its_children_on_ctrl_c() {
    let server = Server::start(BIN, &["--mode", "fork"]);
    let mut c = server.connect();
    assert_eq!(round_trip(&mut c, b"hold on"), b"HOLD ON");
    let stopped = server.interrupt();
    assert!(stopped.status.success(), "{stopped:?}");
    // The child serving `c` was told to stop too: the connection is closed.
    assert_eq!(conformance::read_to_eof(&mut c), b"");
}

#[test]
fn pool_queue_counts_right_in_a_burst() {
    // Three clients at once, one worker, room for one in the queue: one is served, one waits,
    // one is refused, whether or not the worker has picked up the first job yet.
    let server = Server::start(BIN, &["--mode", "pool", "--workers", "1", "--queue", "1"]);
    let mut clients = conformance::connect_many(&server, 3);
    let stderr = server.wait_for_stderr("refusing");
    assert_eq!(stderr.matches("refusing").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("waits in the queue").count(), 1, "{stderr}");
    let mut last = clients.pop().unwrap();
    assert_eq!(conformance::read_to_eof(&mut last), b"");
    let mut waiting = clients.pop().unwrap();
    waiting.write_all(b"queued").unwrap();
    drop(clients); // the served client leaves; the waiting one gets the worker
    assert_eq!(read_reply(&mut waiting, 6), b"QUEUED");
}

/// The pool's summary says what it counts: two workers serve two clients at once while a
/// third is connected and waits; "at most 2 served" beside "at most 3 connected", not one
/// figure that seems to have lost a client.
#[test]
fn pool_summary_tells_served_from_connected() {
    let server = Server::start(BIN, &["--mode", "pool", "--workers", "2"]);
    let mut clients = conformance::connect_many(&server, 2);
    for c in &mut clients {
        assert_eq!(round_trip(c, b"hi"), b"HI");
    }
    let _third = server.connect();
    server.wait_for_stderr("waits in the queue");
    let stopped = server.interrupt();
    assert!(stopped.status.success(), "{stopped:?}");
    for want in [
        "summary: 3 connections,",
        "at most 2 clients served at once",
        "at most 3 connected at once",
        "1 waited for a worker",
    ] {
        assert!(
            stopped.stderr.contains(want),
            "no {want:?} in:\n{}",
            stopped.stderr
        );
    }
}

#[test]
fn fork_leaves_no_child_behind_when_stopped_mid_flood() {
    // SIGTERM while clients keep arriving: the main thread is still forking children while the
    // signal thread stops the ones it knows of. A child forked after that must not outlive the
    // server (an orphan would go on serving its client, its connection never closing).
    let _turn = conformance::heavy_lock();
    let server = Server::start(BIN, &["--mode", "fork"]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut held = Vec::new();
                while !stop.load(Ordering::Relaxed) && held.len() < 1000 {
                    if let Ok(c) = TcpStream::connect(addr) {
                        held.push(c);
                    }
                }
                held
            })
        })
        .collect();
    // Children are being forked: stop the server in the middle of that.
    let deadline = Instant::now() + conformance::PATIENCE;
    while server.stderr().matches("served by process").count() < 200 {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        thread::sleep(Duration::from_millis(5));
    }
    let stopped = server.stop_with(Signal::SIGTERM);
    stop.store(true, Ordering::Relaxed);
    stopped.assert_clean();
    // Every connection is closed now: its child was stopped, or it was never accepted. Each
    // client sends a byte first, which a connection still served answers. Only waiting for the
    // close is not enough: the kernel resets what the listener's close leaves unaccepted with
    // one RST each, sent once, and forgets a handshake whose last ACK it never got, silently.
    // Loopback drops packets under a flood, so a client may wait for ever on a connection that
    // nothing holds any more; its byte is retransmitted until the kernel answers with a reset.
    let mut held: Vec<TcpStream> = flooders
        .into_iter()
        .flat_map(|f| f.join().unwrap())
        .collect();
    for c in &mut held {
        let _ = c.write_all(b"?"); // fails if the reset has come already
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut open = 0;
    for mut c in held {
        let left = deadline.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match c.read(&mut [0; 1]) {
            Ok(1) => open += 1,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => open += 1,
            _ => {}
        }
    }
    assert_eq!(open, 0, "connections still served after the server exited");
}

#[test]
fn pool_without_a_queue_serves_while_a_worker_is_free() {
    // --queue 0: no client waits; one is refused only when every worker is busy.
    let server = Server::start(BIN, &["--mode", "pool", "--workers", "1", "--queue", "0"]);
    let mut first = server.connect();
    assert_eq!(round_trip(&mut first, b"served"), b"SERVED");
    let mut second = server.connect();
    server.wait_for_stderr("refusing");
    assert_eq!(conformance::read_to_eof(&mut second), b"");
    assert_eq!(round_trip(&mut first, b"still"), b"STILL");
}

/// `--work-us`, for the reactor chapter's comparison: every line costs its thread CPU time, and
/// only its own client waits for it. 200 lines of 1 ms cannot come back in less than 200 ms; a
/// light client's line sent meanwhile comes back before the last of them.
#[test]
fn thread_mode_pays_the_work_on_the_clients_own_thread() {
    let server = Server::start(BIN, &["--mode", "thread", "--work-us", "1000"]);
    let mut light = server.connect();
    assert_eq!(round_trip(&mut light, b"warm up\n"), b"WARM UP\n");
    let mut heavy = server.connect();
    let lines: Vec<u8> = (0..200)
        .flat_map(|i| format!("line {i:03}\n").into_bytes())
        .collect();
    let started = Instant::now();
    heavy.write_all(&lines).unwrap();
    let reader = thread::spawn(move || {
        let got = read_reply(&mut heavy, lines.len());
        assert_eq!(got, lines.to_ascii_uppercase());
        Instant::now()
    });
    assert_eq!(round_trip(&mut light, b"light\n"), b"LIGHT\n");
    let light_done = Instant::now();
    let heavy_done = reader.join().unwrap();
    assert!(
        heavy_done - started >= Duration::from_millis(200),
        "the work was not paid"
    );
    assert!(
        light_done < heavy_done,
        "the light client waited for the heavy one"
    );
}
