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
// Before Linux 5.19: one accept per connection, and on stop one cancel per operation.
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
