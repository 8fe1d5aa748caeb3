//! The lecture's warning, shown: a handler that takes long stalls every client of its loop, and
//! a worker pool takes the stall away without breaking the order of any client's replies.
//!
//! Timing here is an order of events (who was answered first), or a lower bound that spinning
//! guarantees (200 lines of 1 ms each cannot take less than 200 ms): never an upper bound on a
//! shared machine's wall clock.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use conformance::{Server, read_exactly, read_to_eof, round_trip, upper};

const BIN: &str = env!("CARGO_BIN_EXE_reactor");

/// 200 numbered lines, and what must come back for them.
fn heavy_lines() -> (Vec<u8>, Vec<u8>) {
    let lines: Vec<u8> = (0..200)
        .flat_map(|i| format!("heavy line {i:03}\n").into_bytes())
        .collect();
    let expected = upper(&lines);
    (lines, expected)
}

/// The heavy client sends 200 lines in one write, then the light one (already connected and
/// served once, so that its loop knows it) sends a single line. Returns how long the light line
/// took, and when each of the two got its last reply byte (the heavy one's replies checked).
fn heavy_beside_light(server: &Server) -> (Duration, Instant, Instant) {
    let mut light = server.connect();
    assert_eq!(round_trip(&mut light, b"warm up\n"), b"WARM UP\n");
    let mut heavy = server.connect();
    assert_eq!(round_trip(&mut heavy, b"warm up\n"), b"WARM UP\n");
    let (lines, expected) = heavy_lines();
    heavy.write_all(&lines).unwrap();
    // The heavy client's bytes are in the server's receive queue before the light one's, so
    // the loop's wait reports the heavy client first.
    let reader = thread::spawn(move || {
        let got = read_exactly(&mut heavy, expected.len());
        let last = Instant::now();
        assert!(
            got == expected,
            "the heavy client's replies differ or are out of order"
        );
        last
    });
    let sent = Instant::now();
    assert_eq!(round_trip(&mut light, b"light\n"), b"LIGHT\n");
    let light_done = Instant::now();
    let heavy_done = reader.join().unwrap();
    (light_done - sent, light_done, heavy_done)
}

#[test]
fn a_slow_handler_stalls_everyone_in_the_loop() {
    let server = Server::start(BIN, &["--work-us", "1000", "--workers", "0"]);
    let (waited, _, _) = heavy_beside_light(&server);
    assert!(
        waited >= Duration::from_millis(100),
        "the light client waited only {waited:?} behind 200 lines of 1 ms each"
    );
    let said = stop(server);
    let longest = summary_number(&said, " µs longest pass");
    assert!(
        longest >= 100_000,
        "the longest pass is {longest} µs:\n{said}"
    );
    assert!(said.contains(" 0 by workers"), "{said}");
}

#[test]
fn workers_answer_the_light_client_while_the_heavy_one_is_worked_on() {
    let server = Server::start(BIN, &["--work-us", "1000", "--workers", "4"]);
    let (_, light_done, heavy_done) = heavy_beside_light(&server);
    assert!(
        light_done < heavy_done,
        "the light client was answered only after the heavy client's last reply"
    );
    let said = stop(server);
    assert!(
        said.contains(" 0 lines handled in the loop, 203 by workers"),
        "{said}"
    );
}

/// Stops the server with Ctrl-C, checks that it stopped cleanly, and returns what it said.
fn stop(server: Server) -> String {
    let stopped = server.interrupt();
    stopped.assert_clean();
    stopped.stderr
}

/// The number the summary prints just before `label` (` wake-ups`, ` µs longest pass`).
fn summary_number(said: &str, label: &str) -> u64 {
    said.split(label)
        .next()
        .filter(|before| before.len() < said.len())
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {label:?} in the summary:\n{said}"))
}

/// Fifty clients each send 100 numbered lines in ten writes without waiting, to a pool of four
/// workers with room for sixteen batches: each client's lines are cut into several batches,
/// clients wait for room at the pool, and yet every client gets exactly its lines back, in order.
#[test]
fn replies_stay_in_order_with_many_clients_and_workers() {
    for loops in ["1", "2"] {
        let server = Server::start(
            BIN,
            &["--work-us", "50", "--workers", "4", "--loops", loops],
        );
        let clients: Vec<TcpStream> = (0..50).map(|_| server.connect()).collect();
        let readers: Vec<thread::JoinHandle<()>> = clients
            .into_iter()
            .enumerate()
            .map(|(c, mut stream)| {
                let lines: Vec<Vec<u8>> = (0..10)
                    .map(|w| {
                        (0..10)
                            .flat_map(|l| {
                                format!("client {c} line {:02}\n", w * 10 + l).into_bytes()
                            })
                            .collect()
                    })
                    .collect();
                let expected = upper(&lines.concat());
                let mut writer = stream.try_clone().unwrap();
                thread::spawn(move || {
                    for write in &lines {
                        writer.write_all(write).unwrap();
                    }
                    writer.shutdown(Shutdown::Write).unwrap();
                });
                thread::spawn(move || {
                    let got = read_to_eof(&mut stream);
                    assert!(
                        got == expected,
                        "client {c}: {} bytes back, {} expected, or out of order",
                        got.len(),
                        expected.len()
                    );
                })
            })
            .collect();
        for reader in readers {
            reader.join().unwrap();
        }
        let said = stop(server);
        assert!(said.contains(" 5000 by workers"), "{said}");
    }
}

/// A costly handler works on whole lines: the piece after the last newline is handled at EOF.
#[test]
fn a_line_without_its_newline_is_handled_at_eof() {
    let server = Server::start(BIN, &["--work-us", "100", "--workers", "2"]);
    let mut c = server.connect();
    c.write_all(b"first line\nno newline").unwrap();
    assert_eq!(read_exactly(&mut c, 11), b"FIRST LINE\n");
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut c), b"NO NEWLINE");
}

/// Two loops share one port: connections to it are spread across both, and each loop serves
/// its own. (Twenty connections all hashed to one of two sockets: one chance in half a million.)
#[test]
fn two_loops_share_the_port() {
    let server = Server::start(BIN, &["--loops", "2"]);
    let mut clients: Vec<TcpStream> = (0..20).map(|_| server.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("client {i}\n");
        assert_eq!(round_trip(c, msg.as_bytes()), upper(msg.as_bytes()));
    }
    let said = stop(server);
    let line = said
        .lines()
        .find_map(|l| {
            l.split_once("connections per loop: ")
                .map(|(_, s)| s.to_owned())
        })
        .unwrap_or_else(|| panic!("no connections per loop:\n{said}"));
    let counts: Vec<u64> = line
        .trim_matches(['[', ']'])
        .split(", ")
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 2, "{line}");
    assert_eq!(counts.iter().sum::<u64>(), 20, "{line}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "one loop got every connection: {line}"
    );
}

/// A line as long as the input buffer may grow, without a newline, is handled as it is rather
/// than waiting for ever for a newline that the server would stop reading to find.
#[test]
fn a_huge_line_is_handled_without_its_newline() {
    let server = Server::start(BIN, &["--work-us", "100", "--workers", "1"]);
    let mut c = server.connect();
    let mut writer = c.try_clone().unwrap();
    let data = vec![b'q'; 256 * 1024];
    let sender = thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_to_eof(&mut c);
    sender.join().unwrap();
    assert_eq!(got.len(), 256 * 1024);
    assert!(got.iter().all(|&b| b == b'Q'));
}

/// Clients that reset while their lines are at the pool or wait for room there: the loop reads
/// and writes none of them meanwhile, so only the hang-up says they left. It must close them at
/// once, not be woken by the same hang-up on every wait until the pool gets to them.
#[test]
fn clients_that_leave_while_their_lines_wait_are_closed_at_once() {
    let server = Server::start(BIN, &["--work-us", "1000", "--workers", "1"]);
    let mut first = server.connect();
    assert_eq!(round_trip(&mut first, b"first\n"), b"FIRST\n");
    first.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut first), b""); // the server has closed it: a baseline
    let baseline = conformance::open_descriptors(server.pid());
    let lines: Vec<u8> = (0..200)
        .flat_map(|i| format!("line {i:03}\n").into_bytes())
        .collect();
    // Ten clients, 0.2 s of work each, one worker: two seconds of batches, most of them queued.
    let mut clients: Vec<TcpStream> = (0..10).map(|_| server.connect()).collect();
    for c in &mut clients {
        c.write_all(&lines).unwrap();
    }
    // The first batch takes 200 ms of the worker; the loop, idle meanwhile, has read every
    // client's lines long before its reply comes back.
    assert_eq!(read_exactly(&mut clients[0], lines.len()), upper(&lines));
    for c in &clients[1..] {
        conformance::reset_on_close(c);
    }
    clients.truncate(1);
    // Wait until the server has closed the nine (a fixed server at once, a broken one only once
    // the pool has worked through their batches), then count its wake-ups.
    let deadline = Instant::now() + conformance::PATIENCE;
    while conformance::open_descriptors(server.pid()) > baseline + 1 {
        assert!(
            Instant::now() < deadline,
            "the clients that left were never closed"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let said = stop(server);
    let wakeups = summary_number(&said, " wake-ups");
    assert!(
        wakeups < 1_000,
        "{wakeups} wake-ups: the loop kept waking for clients that had left\n{said}"
    );
}
