//! What this chapter shows beyond the contract: io_uring's absence explained, POSIX AIO's
//! helper threads following the clients, and the helper limit enforced.
use std::time::{Duration, Instant};

use conformance::{PATIENCE, Server, round_trip, run_to_exit, thread_count, upper};

const BIN: &str = env!("CARGO_BIN_EXE_aio");

/// A kernel without io_uring (ENOSYS: too old, or hidden by seccomp) ends the server with one
/// line that names the way out, and a non-zero exit, before anything is announced. The hidden
/// flag makes set-up fail with that same ENOSYS, reported by the same code as a real failure.
#[test]
fn no_io_uring_suggests_posix() {
    let out = run_to_exit(BIN, &["--simulate-no-uring", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {:?}", out.status);
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "want one line, got:\n{stderr}"
    );
    assert!(
        stderr.contains("--backend posix"),
        "no way out named:\n{stderr}"
    );
    assert!(
        stderr.contains("io_uring"),
        "does not say what failed:\n{stderr}"
    );
    assert!(out.stdout.is_empty(), "announced although set-up failed");
}

/// Polls the server's thread count until `done` holds; fails after PATIENCE.
fn wait_for_threads(server: &Server, what: &str, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n = thread_count(server.pid());
        if done(n) {
            return n;
        }
        assert!(Instant::now() < deadline, "threads never {what}: still {n}");
        std::thread::sleep(Duration::from_millis(20)); // polling interval, not a synchronisation
    }
}

/// POSIX AIO as glibc implements it: each connected client with a read outstanding holds one
/// helper thread blocked in read(2). With 40 idle clients the server has more than 30
/// threads; once they leave, the helpers find no work and exit (after ~1 s idle).
#[test]
fn posix_threads_follow_clients() {
    let server = Server::start(BIN, &["--backend", "posix"]);
    let before = thread_count(server.pid());
    let mut clients: Vec<_> = (0..40).map(|_| server.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("client {i}");
        assert_eq!(round_trip(c, msg.as_bytes()), upper(msg.as_bytes()));
    }
    // Every client has had its reply, so its next read is submitted and waiting.
    let busy = wait_for_threads(&server, "rose past 30", |n| n > 30);
    drop(clients);
    let after = wait_for_threads(&server, "fell", |n| n < 10);
    eprintln!("threads: {before} before, {busy} with 40 idle clients, {after} after");
}

/// io_uring needs no thread per client: 200 idle clients, still one thread.
#[test]
fn uring_needs_no_threads() {
    let server = Server::start(BIN, &["--backend", "uring"]);
    let mut clients: Vec<_> = (0..200).map(|_| server.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("client {i}");
        assert_eq!(round_trip(c, msg.as_bytes()), upper(msg.as_bytes()));
    }
    let threads = thread_count(server.pid());
    assert!(threads < 5, "{threads} threads for 200 idle clients");
}

/// With every helper thread spoken for by an idle client, one more client would wait unserved
/// for ever; the server refuses it instead, says so, and goes on serving the others.
#[test]
fn posix_refuses_past_its_helpers() {
    let server = Server::start(BIN, &["--backend", "posix", "--threads", "4"]);
    let mut clients: Vec<_> = (0..4).map(|_| server.connect()).collect();
    for c in &mut clients {
        assert_eq!(round_trip(c, b"hi"), b"HI");
    }
    let mut extra = server.connect();
    server.wait_for_stderr("raise --threads");
    let mut byte = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut extra, &mut byte).unwrap_or(0),
        0,
        "not closed"
    );
    assert_eq!(round_trip(&mut clients[0], b"still here"), b"STILL HERE");
    let stopped = server.interrupt();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(stopped.stderr.contains("1 refused"), "{}", stopped.stderr);
}

/// At the helper limit, a client that leaves makes room for the next one, even when the next
/// one connects at once: its connection may reach the server before the leaving client's
/// end-of-file has (a helper's read must complete first). The newcomer must be served, not
/// refused; a client that finds every helper really taken is still refused.
#[test]
fn posix_makes_room_for_a_returning_client() {
    let server = Server::start(BIN, &["--backend", "posix", "--threads", "4"]);
    let mut clients: Vec<_> = (0..4).map(|_| server.connect()).collect();
    for c in &mut clients {
        assert_eq!(round_trip(c, b"hi"), b"HI");
    }
    for i in 0..20 {
        drop(clients.remove(0));
        let mut again = server.connect();
        let msg = format!("back again, {i}");
        let mut got = vec![0u8; msg.len()];
        std::io::Write::write_all(&mut again, msg.as_bytes()).unwrap();
        let read = std::io::Read::read_exact(&mut again, &mut got);
        assert!(
            read.is_ok() && got == upper(msg.as_bytes()),
            "round {i}: refused ({read:?}) although a client had just left; stderr:\n{}",
            server.stderr()
        );
        clients.push(again);
    }
    let mut extra = server.connect();
    server.wait_for_stderr("raise --threads");
    let mut byte = [0u8; 1];
    let n = std::io::Read::read(&mut extra, &mut byte).unwrap_or(0);
    assert_eq!(n, 0, "a fifth client was served beside four");
}

/// A client waiting for a helper makes the loop wait with a timeout (aio_suspend's third
/// argument), until the waiting client's grace runs out. That path must hold however often it
/// runs: it once handed glibc a timeout that was no longer there (nix 0.32's aio_suspend points
/// at a copy gone before the call), the kernel refused the garbage (EINVAL), and glibc aborted
/// the server on its assertion in `do_aio_misc_wait` as soon as a second client connected.
#[test]
fn posix_waiting_clients_never_crash_the_server() {
    let mut server = Server::start(BIN, &["--backend", "posix", "--threads", "1"]);
    let mut held = server.connect();
    assert_eq!(round_trip(&mut held, b"first"), b"FIRST");
    for i in 0..50 {
        // The newcomer waits: every helper is taken, and the loop now waits with a timeout.
        let mut next = server.connect();
        let msg = format!("waiting {i}");
        std::io::Write::write_all(&mut next, msg.as_bytes()).unwrap();
        assert_eq!(round_trip(&mut held, b"still served"), b"STILL SERVED");
        // The held client leaves, and the newcomer is admitted and answered.
        drop(held);
        let mut got = vec![0u8; msg.len()];
        let read = std::io::Read::read_exact(&mut next, &mut got);
        assert!(
            read.is_ok() && got == upper(msg.as_bytes()),
            "round {i}: no reply ({read:?}); running: {}; stderr:\n{}",
            server.is_running(),
            server.stderr()
        );
        held = next;
    }
    assert!(server.is_running(), "{}", server.stderr());
    let stopped = server.interrupt();
    stopped.assert_clean();
}

/// `-v` says why a connection ended: a client that resets while the server waits to read from
/// it is traced with the reset, on both backends (POSIX AIO reports a request's error through
/// aio_error; aio_return only says -1).
fn reset_is_traced(args: &[&str]) {
    let server = Server::start(BIN, args);
    let mut c = server.connect();
    assert_eq!(round_trip(&mut c, b"hi"), b"HI");
    conformance::reset_on_close(&c);
    drop(c);
    server.wait_for_stderr("Connection reset by peer");
}

#[test]
fn uring_reset_is_traced() {
    reset_is_traced(&["--backend", "uring", "-v"]);
}

#[test]
fn posix_reset_is_traced() {
    reset_is_traced(&["--backend", "posix", "-v"]);
}

/// Clients that reset mid-stream end in error completions; each must close its connection and
/// leak nothing: once they are gone, the server is back to the descriptors it started with.
fn resets_leak_nothing(args: &[&str]) {
    let server = Server::start(BIN, args);
    let mut first = server.connect();
    assert_eq!(round_trip(&mut first, b"warm up"), b"WARM UP");
    drop(first);
    let baseline = {
        let deadline = Instant::now() + PATIENCE;
        let mut n = conformance::open_descriptors(server.pid());
        // The warm-up connection closes asynchronously; wait for it to settle.
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let again = conformance::open_descriptors(server.pid());
            if again == n {
                break;
            }
            n = again;
        }
        n
    };
    let chunk = vec![b'x'; 256 * 1024];
    for _ in 0..30 {
        // A round trip first, so that the server holds this connection before it is reset.
        let mut c = server.connect();
        assert_eq!(round_trip(&mut c, b"hi"), b"HI");
        // Then more than the socket buffers hold, unread, and a reset: the server is mid-send.
        c.set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let _ = std::io::Write::write_all(&mut c, &chunk);
        conformance::reset_on_close(&c);
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n = conformance::open_descriptors(server.pid());
        if n <= baseline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} descriptors open, {baseline} before"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling interval
    }
    let mut c = server.connect();
    assert_eq!(round_trip(&mut c, b"still fine"), b"STILL FINE");
}

#[test]
fn uring_resets_leak_nothing() {
    resets_leak_nothing(&["--backend", "uring"]);
}

#[test]
fn posix_resets_leak_nothing() {
    resets_leak_nothing(&["--backend", "posix"]);
}

/// The same with a ring of 4 entries, where error completions queue behind a full ring.
#[test]
fn uring_small_ring_resets_leak_nothing() {
    resets_leak_nothing(&["--backend", "uring", "--ring-entries", "4"]);
}

/// The number before `what` (e.g. " io_uring_enter calls") in the server's stderr.
fn summary_count(stderr: &str, what: &str) -> Option<u64> {
    let mut parts = stderr.lines().flat_map(|line| line.split(", "));
    parts.find_map(|part| part.strip_suffix(what)?.parse().ok())
}

/// Sends `data` from a second thread while reading the reply, as a client that writes and
/// reads at once; returns the reply.
fn both_ways(c: &mut std::net::TcpStream, data: Vec<u8>) -> Vec<u8> {
    let mut writer = c.try_clone().expect("clone");
    let n = data.len();
    let sender = std::thread::spawn(move || {
        std::io::Write::write_all(&mut writer, &data).expect("write");
    });
    let got = conformance::read_exactly(c, n);
    sender.join().expect("sender");
    got
}

/// A pool of 4 buffers, and 40 clients each sending 256 KiB at once while reading their
/// replies: the pool runs dry again and again (the summary counts the receives that found it
/// empty), every receive is armed again once a buffer returns, and every byte comes back right.
#[test]
fn uring_buffer_exhaustion_loses_nothing() {
    let server = Server::start(BIN, &["--backend", "uring", "--buffers", "4"]);
    let workers: Vec<_> = (0..40)
        .map(|i| {
            let mut c = server.connect();
            std::thread::spawn(move || {
                let data = conformance::Rng::new(i).bytes(256 * 1024);
                let expected = upper(&data);
                assert!(
                    both_ways(&mut c, data) == expected,
                    "client {i}: reply differs"
                );
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a client failed");
    }
    let stopped = server.interrupt();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let empty = summary_count(&stopped.stderr, " receives without a buffer");
    assert!(
        empty.is_some_and(|n| n > 0),
        "the pool never ran dry, or the summary does not say:\n{}",
        stopped.stderr
    );
}

/// A kernel or sandbox that refuses the SQ polling thread: one line that names the way out,
/// a non-zero exit, nothing announced. The hidden flag fails set-up with the EPERM such a
/// sandbox gives, reported by the same code.
#[test]
fn sqpoll_refused_says_so() {
    let out = run_to_exit(BIN, &["--sqpoll", "--simulate-no-sqpoll", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {:?}", out.status);
    assert_eq!(stderr.trim().lines().count(), 1, "want one line:\n{stderr}");
    assert!(stderr.contains("without --sqpoll"), "no way out:\n{stderr}");
    assert!(out.stdout.is_empty(), "announced although set-up failed");
}

/// 4 clients making 1,000 lockstep round trips each, and the io_uring_enter calls the server
/// counted (bench syscalls checks that count against strace's).
fn enter_calls_per_round_trip(args: &[&str]) -> f64 {
    let server = Server::start(BIN, args);
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let mut c = server.connect();
            std::thread::spawn(move || {
                for n in 0..1_000 {
                    let msg = format!("client {i} line {n}");
                    assert_eq!(round_trip(&mut c, msg.as_bytes()), upper(msg.as_bytes()));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    let stopped = server.interrupt();
    stopped.assert_clean();
    let calls = summary_count(&stopped.stderr, " io_uring_enter calls")
        .unwrap_or_else(|| panic!("no io_uring_enter count:\n{}", stopped.stderr));
    calls as f64 / 4_000.0
}

/// With --sqpoll the kernel thread takes the submissions, and the loop watches the completion
/// ring long enough to sleep about once per 16 round trips: far fewer calls than the plain
/// ring, which makes one per wait.
#[test]
fn sqpoll_makes_almost_no_system_calls() {
    let _alone = conformance::heavy_lock();
    let plain = enter_calls_per_round_trip(&["--backend", "uring"]);
    let sqpoll = enter_calls_per_round_trip(&["--backend", "uring", "--sqpoll"]);
    eprintln!("io_uring_enter per round trip: {plain:.3} plain, {sqpoll:.3} with --sqpoll");
    // (Typically 0.06 against 0.25 or more; bench syscalls counts them under strace.)
    assert!(
        sqpoll < plain / 2.0,
        "--sqpoll made {sqpoll:.3} calls per round trip, the plain ring {plain:.3}"
    );
}

/// One buffer for everyone, and clients that come and go (some reset right after sending):
/// the connections queued for a buffer include some that were armed again since, or closed,
/// their descriptors maybe reused. A returned buffer must still reach a connection that waits
/// for it; none is stranded without its reply.
#[test]
fn uring_one_buffer_strands_no_one() {
    let _alone = conformance::heavy_lock();
    let server = Server::start(BIN, &["--backend", "uring", "--buffers", "1"]);
    let addr = server.addr;
    let workers: Vec<_> = (0..24)
        .map(|i| {
            std::thread::spawn(move || {
                let mut rng = conformance::Rng::new(i);
                for visit in 0..30 {
                    let mut c = std::net::TcpStream::connect(addr).expect("connect");
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let size = [10, 5_000, 70_000][rng.below(3)];
                    let data = rng.bytes(size);
                    if rng.below(10) < 3 {
                        std::io::Write::write_all(&mut c, &data).expect("write");
                        conformance::reset_on_close(&c);
                        continue;
                    }
                    let expected = upper(&data);
                    let got = both_ways(&mut c, data);
                    assert!(got == expected, "client {i}, visit {visit}: reply differs");
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .expect("a client was stranded, or its reply was wrong");
    }
    server.interrupt().assert_clean();
}

/// Clients that send and never read: their replies wait in the pool's buffers behind sends
/// that never end. The server copies them out (and stops reading those clients), so the pool
/// that everyone shares still serves the others, with one buffer, or four and six such clients.
#[test]
fn uring_clients_that_never_read_do_not_hold_the_pool() {
    let _alone = conformance::heavy_lock();
    for (buffers, deaf) in [("1", 1), ("4", 6)] {
        let server = Server::start(BIN, &["--backend", "uring", "--buffers", buffers]);
        let deaf: Vec<_> = (0..deaf)
            .map(|_| {
                let mut c = server.connect();
                c.set_write_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                // Until the server stops taking our bytes: our replies are all it holds.
                while std::io::Write::write(&mut c, &[b'x'; 64 * 1024]).is_ok() {}
                c
            })
            .collect();
        for i in 0..3 {
            let mut c = server.connect();
            let msg = format!("after {} that never read, client {i}", deaf.len());
            assert_eq!(round_trip(&mut c, msg.as_bytes()), upper(msg.as_bytes()));
        }
        drop(deaf);
        server.interrupt().assert_clean();
    }
}
