//! The contract, then the model's lesson: busy polling burns a core, and a nap between passes
//! (the lecture's remedy) cools it without breaking the echo.
use std::time::Duration;

use conformance::Server;

const BIN: &str = env!("CARGO_BIN_EXE_nonblocking");

conformance::suite!(
    nonblocking,
    env!("CARGO_BIN_EXE_nonblocking"),
    [],
    clients = 200
);

#[test]
fn back_pressure() {
    conformance::back_pressure(BIN, &[], 32);
}

/// The lesson: with 20 silent clients and no nap, the loop keeps asking and a core stays busy.
/// (Most of a core on an idle machine; the bound leaves room for a crowded one.)
#[test]
fn idle_burns_a_core() {
    let _turn = conformance::heavy_lock();
    let server = Server::start(BIN, &[]);
    let share = conformance::idle_cpu_share(&server, 20, Duration::from_secs(1));
    assert!(
        share > 0.3,
        "{share:.2} of a core with 20 idle clients; a busy loop should burn most of one"
    );
    let stopped = server.interrupt();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("passes that found nothing to do"),
        "no count of wasted passes:\n{}",
        stopped.stderr
    );
}

/// `--sleep-ms 50`: replies still come back right, only later.
#[test]
fn sleep_still_echoes() {
    conformance::hello(BIN, &["--sleep-ms", "50"]);
    conformance::half_close(BIN, &["--sleep-ms", "50"]);
}

/// `--sleep-ms 50`: the same 20 idle clients now cost next to nothing.
#[test]
fn sleep_cools_the_core() {
    let _turn = conformance::heavy_lock();
    let server = Server::start(BIN, &["--sleep-ms", "50"]);
    let share = conformance::idle_cpu_share(&server, 20, Duration::from_secs(1));
    assert!(
        share < 0.1,
        "{share:.2} of a core with 20 idle clients and a 50 ms nap per pass"
    );
}

#[test]
fn leaving_while_back_pressured() {
    conformance::leaving_while_back_pressured(env!("CARGO_BIN_EXE_nonblocking"), &[]);
}

#[test]
fn stop_under_load() {
    conformance::stop_under_load(env!("CARGO_BIN_EXE_nonblocking"), &[]);
}
