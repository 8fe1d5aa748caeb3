//! The contract, in each of the four modes.
// The iterative server serves one client at a time by design: no concurrency check.
conformance::suite!(single, env!("CARGO_BIN_EXE_blocking"), ["--mode", "single"]);
conformance::suite!(
    thread,
    env!("CARGO_BIN_EXE_blocking"),
    ["--mode", "thread"],
    clients = 300
);
conformance::suite!(
    fork,
    env!("CARGO_BIN_EXE_blocking"),
    ["--mode", "fork"],
    clients = 50
);
// A pool serves at most --workers clients at once; the interleaved check needs them all served.
conformance::suite!(
    pool,
    env!("CARGO_BIN_EXE_blocking"),
    ["--mode", "pool", "--workers", "16"],
    clients = 16
);

// Out of descriptors (`ulimit -n 64`): accept fails at once, so the acceptor must not just
// call it again. (In fork mode the parent holds no descriptor per client, and single mode
// serves one client at a time, so only these two modes run out.)
#[test]
fn thread_out_of_descriptors() {
    conformance::out_of_descriptors(env!("CARGO_BIN_EXE_blocking"), &["--mode", "thread"]);
}

#[test]
fn pool_out_of_descriptors() {
    let args = ["--mode", "pool", "--workers", "50"];
    conformance::out_of_descriptors(env!("CARGO_BIN_EXE_blocking"), &args);
}
