//! `--echo` keeps the workspace's echo contract, on the default selector and on poll and select.
conformance::suite!(
    echo,
    env!("CARGO_BIN_EXE_selectors-chat"),
    ["--echo"],
    clients = 2000
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

#[test]
fn echo_back_pressure() {
    conformance::back_pressure(env!("CARGO_BIN_EXE_selectors-chat"), &["--echo"], 32);
}

#[test]
fn echo_idle_is_quiet() {
    conformance::idle_is_quiet(env!("CARGO_BIN_EXE_selectors-chat"), &["--echo"], 100);
}

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

#[test]
fn echo_out_of_descriptors() {
    conformance::out_of_descriptors(env!("CARGO_BIN_EXE_selectors-chat"), &["--echo"]);
}

#[test]
fn echo_stop_under_load() {
    let bin = env!("CARGO_BIN_EXE_selectors-chat");
    for selector in ["epoll", "poll", "select"] {
        conformance::stop_under_load(bin, &["--echo", "--selector", selector]);
    }
}
