//! The contract, for both backends: io_uring with 10,000 concurrent clients, POSIX AIO with as
//! many as its default 64 helper threads admit.
conformance::suite!(
    uring,
    env!("CARGO_BIN_EXE_aio"),
    ["--backend", "uring"],
    clients = 10_000
);
conformance::suite!(
    posix,
    env!("CARGO_BIN_EXE_aio"),
    ["--backend", "posix"],
    clients = 64
);

#[test]
fn uring_back_pressure() {
    conformance::back_pressure(env!("CARGO_BIN_EXE_aio"), &["--backend", "uring"], 32);
}

#[test]
fn posix_back_pressure() {
    conformance::back_pressure(env!("CARGO_BIN_EXE_aio"), &["--backend", "posix"], 32);
}

/// io_uring sleeps in io_uring_enter while 200 clients are idle: ~0% CPU.
#[test]
fn uring_idle_is_quiet() {
    conformance::idle_is_quiet(env!("CARGO_BIN_EXE_aio"), &["--backend", "uring"], 200);
}

/// POSIX AIO with 200 idle clients (and 200 helper threads allowed): the loop sleeps in
/// aio_suspend and each helper in read(2), so it is quiet too; the cost is in threads, not CPU.
#[test]
fn posix_idle_is_quiet() {
    let args = ["--backend", "posix", "--threads", "200"];
    conformance::idle_is_quiet(env!("CARGO_BIN_EXE_aio"), &args, 200);
}

// The same contract on paths this machine's kernel would not take by itself.
// Linux 5.19, before multishot receive: one receive per submission.
conformance::suite!(
    uring_old_kernel,
    env!("CARGO_BIN_EXE_aio"),
    ["--backend", "uring", "--simulate-old-kernel"],
    clients = 2_000
);
// A ring of 4 entries (32 completions): the submission ring fills within one pass and the
// completion ring overflows, so the kernel holds completions back until the next enter.
conformance::suite!(
    uring_small_ring,
    env!("CARGO_BIN_EXE_aio"),
    ["--backend", "uring", "--ring-entries", "4"],
    clients = 2_000
);

// Ctrl-C while the server is flat out, on every path that waits differently.
#[test]
fn uring_stops_under_load() {
    conformance::stop_under_load(env!("CARGO_BIN_EXE_aio"), &["--backend", "uring"]);
}

#[test]
fn uring_old_kernel_stops_under_load() {
    let args = ["--backend", "uring", "--simulate-old-kernel"];
    conformance::stop_under_load(env!("CARGO_BIN_EXE_aio"), &args);
}

#[test]
fn uring_small_ring_stops_under_load() {
    let args = ["--backend", "uring", "--ring-entries", "4"];
    conformance::stop_under_load(env!("CARGO_BIN_EXE_aio"), &args);
}

#[test]
fn posix_stops_under_load() {
    conformance::stop_under_load(env!("CARGO_BIN_EXE_aio"), &["--backend", "posix"]);
}

// --sqpoll: a kernel thread takes the submissions, and the loop watches the completion ring
// before it sleeps. The same contract, with almost no system calls.
conformance::suite!(
    uring_sqpoll,
    env!("CARGO_BIN_EXE_aio"),
    ["--backend", "uring", "--sqpoll"],
    clients = 2_000
);

#[test]
fn uring_sqpoll_back_pressure() {
    let args = ["--backend", "uring", "--sqpoll"];
    conformance::back_pressure(env!("CARGO_BIN_EXE_aio"), &args, 32);
}

#[test]
fn uring_sqpoll_stops_under_load() {
    let args = ["--backend", "uring", "--sqpoll"];
    conformance::stop_under_load(env!("CARGO_BIN_EXE_aio"), &args);
}

/// Idle with --sqpoll: both the loop's watch and the kernel thread give up and sleep.
#[test]
fn uring_sqpoll_idle_is_quiet() {
    let args = ["--backend", "uring", "--sqpoll"];
    conformance::idle_is_quiet(env!("CARGO_BIN_EXE_aio"), &args, 200);
}

// A pool of 4 receive buffers for 2,000 clients: receives find it empty (ENOBUFS) and wait
// for a buffer to come back, and no byte is lost or reordered.
conformance::suite!(
    uring_few_buffers,
    env!("CARGO_BIN_EXE_aio"),
    ["--backend", "uring", "--buffers", "4"],
    clients = 2_000
);
