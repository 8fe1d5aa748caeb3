//! Out of descriptors, for both backends. Under `ulimit -n 64`, a flood of connections makes
//! accept fail with EMFILE. The server must say so, keep serving the clients it has, not spin
//! (the refused connection stays queued), and accept again once descriptors are free.

use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use conformance::{Server, cpu_seconds, round_trip};

/// Starts the server with a soft and hard limit of 64 descriptors.
fn start_with_few_descriptors(args: &[&str]) -> Server {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_aio"))
        .args(args)
        .arg("127.0.0.1:0");
    Server::spawn(cmd)
}

fn hello(c: &mut TcpStream, i: usize) {
    let msg = format!("kept client {i}");
    assert_eq!(
        round_trip(c, msg.as_bytes()),
        msg.to_ascii_uppercase().as_bytes()
    );
}

/// Half-closes `c` and waits for the server to close its end (EOF, or a reset for a
/// connection it closed unserved): after that, the server holds no descriptor for it.
fn leave(c: &mut TcpStream) {
    let _ = c.shutdown(Shutdown::Write);
    let mut buf = [0u8; 64];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("waiting for the server to close: {e}"),
        }
    }
}

fn flood_without_spinning(args: &[&str]) {
    let server = start_with_few_descriptors(args);
    let mut kept: Vec<TcpStream> = (0..40).map(|_| server.connect()).collect();
    for (i, c) in kept.iter_mut().enumerate() {
        hello(c, i);
    }

    let before = cpu_seconds(server.pid());
    let started = Instant::now();
    // 100 more connections: the kernel completes them all (the listen backlog is large); the
    // server can take ~15 of them before accept fails with EMFILE.
    let mut flood: Vec<TcpStream> = (0..100).map(|_| server.connect()).collect();
    let said = server.wait_for_stderr("unserved");
    assert!(
        said.contains("out of descriptors") || said.contains("Too many open files"),
        "stderr:\n{said}"
    );
    for (i, c) in kept.iter_mut().enumerate() {
        hello(c, i);
    }
    // The measurement window itself, not a synchronisation. A healthy server uses ~0.00 s of
    // CPU here; one that spins on the queued connection burns most of the 2 s.
    thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    let used = cpu_seconds(server.pid()) - before;
    let window = started.elapsed().as_secs_f64();
    assert!(
        used < 0.25,
        "{used:.2} s of CPU in {window:.1} s while out of descriptors: a busy loop"
    );

    for c in kept.iter_mut().chain(&mut flood) {
        leave(c);
    }
    let mut late = server.connect();
    assert_eq!(round_trip(&mut late, b"room again?"), b"ROOM AGAIN?");
    let stopped = server.interrupt();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
fn uring_out_of_descriptors() {
    flood_without_spinning(&["--backend", "uring"]);
}

#[test]
fn posix_out_of_descriptors() {
    flood_without_spinning(&["--backend", "posix"]);
}
