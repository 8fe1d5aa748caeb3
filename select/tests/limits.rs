//! select's ceiling from outside: an `fd_set` has bits for descriptors 0..1023 only, so the
//! server refuses every connection whose descriptor would be 1024 or more. Refused clients
//! must see a clean close (EOF, not a reset), the server must say why, keep serving everyone
//! else, and count the refusals in its summary.
use std::io::Read;

use conformance::{Server, round_trip, upper};

/// Comfortably past FD_SETSIZE (1024), counting the server's own few descriptors.
const CLIENTS: usize = 1100;

#[test]
fn past_fd_setsize_clients_are_refused_cleanly() {
    let _turn = conformance::heavy_lock();
    let limit = conformance::raise_descriptor_limit() as usize;
    assert!(
        limit > CLIENTS + 100,
        "descriptor limit {limit} is too low for this test; raise `ulimit -n`"
    );
    // -v makes the server name each client it accepts (`PEER: connected`); it always names
    // the ones it refuses (`refusing PEER: ...`). Each client waits for its own line before it
    // writes anything: a socket closed with unread input sends a reset, not EOF, so a refused
    // client that had already written could not tell a clean refusal from a crash.
    let server = Server::start(env!("CARGO_BIN_EXE_select"), &["-v"]);
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for i in 0..CLIENTS {
        let mut c = server.connect();
        let me = c.local_addr().unwrap();
        let said = server.wait_for_stderr(&format!("{me}: "));
        if said.contains(&format!("refusing {me}:")) {
            let mut byte = [0u8; 1];
            match c.read(&mut byte) {
                Ok(0) => {}
                other => panic!("refused client {i} should see EOF, got {other:?}"),
            }
            refused.push(c);
        } else {
            // Nobody leaves, so once descriptor 1024 is reached every later client is past it.
            assert!(
                refused.is_empty(),
                "client {i} was served after {} were refused",
                refused.len()
            );
            let msg = format!("client {i} connects\n");
            assert_eq!(round_trip(&mut c, msg.as_bytes()), upper(msg.as_bytes()));
            served.push(c);
        }
    }
    // Descriptors 0..1023 minus the few the server holds (stdio, listener, spare): ~1000.
    assert!(
        (1000..1024).contains(&served.len()),
        "{} clients served before the ceiling; expected just under 1024",
        served.len()
    );
    let text = server.stderr();
    assert!(
        text.contains("descriptor 1024 is past select's FD_SETSIZE"),
        "the first refusal should name descriptor 1024 and FD_SETSIZE:\n{}",
        text.lines()
            .find(|l| l.contains("refusing"))
            .unwrap_or("(none)")
    );

    // The refusals cost the others nothing: the first and the last client served still echo.
    let first = served.first_mut().unwrap();
    assert_eq!(round_trip(first, b"still here?"), b"STILL HERE?");
    let last = served.last_mut().unwrap();
    assert_eq!(round_trip(last, b"me too?"), b"ME TOO?");

    let stopped = server.interrupt();
    assert!(stopped.status.success(), "exit status {:?}", stopped.status);
    let summary = stopped
        .stderr
        .lines()
        .find(|l| l.contains("summary:"))
        .unwrap_or_else(|| panic!("no summary:\n{}", stopped.stderr));
    let want = format!("{} refused past FD_SETSIZE", refused.len());
    assert!(summary.contains(&want), "want {want:?} in: {summary}");
    let want = format!("{} connections", served.len());
    assert!(summary.contains(&want), "want {want:?} in: {summary}");
}
