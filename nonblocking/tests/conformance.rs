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
/// How much of one it gets depends on who else runs (most of a core on an idle machine), so
/// the test asks the scheduler instead: a busy loop is never asleep, it runs or waits to run
/// the whole time (/proc/PID/schedstat: time on a CPU, time waiting in the run queue).
#[test]
fn idle_burns_a_core() {
    let _turn = conformance::heavy_lock();
    let server = Server::start(BIN, &[]);
    let _idle = conformance::connect_many(&server, 20);
    let schedstat = || {
        let text = std::fs::read_to_string(format!("/proc/{}/schedstat", server.pid()))
            .expect("/proc/PID/schedstat");
        let ns: Vec<f64> = text
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        (ns[0], ns[1])
    };
    let ((ran, waited), started) = (schedstat(), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(1)); // the measurement window itself
    let (ran_after, waited_after) = schedstat();
    let window = started.elapsed().as_nanos() as f64;
    let (cpu, wanted) = (
        (ran_after - ran) / window,
        (ran_after - ran + waited_after - waited) / window,
    );
    assert!(
        wanted > 0.8,
        "with 20 idle clients the loop ran {cpu:.2} and wanted {wanted:.2} of a core; a busy \
         loop never sleeps"
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
