//! `--echo` keeps the workspace's echo contract, on the default selector (with the event-driven
//! checks) and on poll and select.
conformance::suite!(
    echo,
    env!("CARGO_BIN_EXE_selectors-chat"),
    ["--echo"],
    clients = 2000,
    event_driven(idle = 100)
);
conformance::suite!(
    echo_poll,
    env!("CARGO_BIN_EXE_selectors-chat"),
    ["--echo", "--selector", "poll"],
    clients = 500
);
// select's ceiling is FD_SETSIZE (1024) descriptors, the listener and stdio included.
conformance::suite!(
    echo_select,
    env!("CARGO_BIN_EXE_selectors-chat"),
    ["--echo", "--selector", "select"],
    clients = 900
);

/// Past FD_SETSIZE, `--selector select` refuses the connection with the reason, and goes on.
#[test]
fn select_refuses_past_fd_setsize() {
    let _turn = conformance::heavy_lock();
    let bin = env!("CARGO_BIN_EXE_selectors-chat");
    let server = conformance::Server::start(bin, &["--echo", "--selector", "select"]);
    let mut clients = conformance::connect_many(&server, 1100);
    server.wait_for_stderr("past select's FD_SETSIZE (1024)");
    // The first ones are served; the server is still alive.
    assert_eq!(conformance::round_trip(&mut clients[0], b"ok"), b"OK");
    let stopped = server.interrupt();
    assert!(stopped.status.success());
    assert!(
        stopped.stderr.contains("refused by the selector"),
        "{}",
        stopped.stderr
    );
}

/// Ctrl-C under load on the other selectors too (the default's is `echo::stop_under_load`).
#[test]
fn echo_stop_under_load() {
    let bin = env!("CARGO_BIN_EXE_selectors-chat");
    for selector in ["poll", "select"] {
        conformance::stop_under_load(bin, &["--echo", "--selector", selector]);
    }
}
