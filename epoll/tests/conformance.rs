//! The contract, with 10,000 concurrent clients, level-triggered and edge-triggered.
conformance::suite!(level, env!("CARGO_BIN_EXE_epoll"), [], clients = 10_000);
conformance::suite!(
    edge,
    env!("CARGO_BIN_EXE_epoll"),
    ["--edge"],
    clients = 10_000
);

#[test]
fn back_pressure_level() {
    conformance::back_pressure(env!("CARGO_BIN_EXE_epoll"), &[], 32);
}

#[test]
fn back_pressure_edge() {
    conformance::back_pressure(env!("CARGO_BIN_EXE_epoll"), &["--edge"], 32);
}

#[test]
fn idle_is_quiet_level() {
    conformance::idle_is_quiet(env!("CARGO_BIN_EXE_epoll"), &[], 1_000);
}

#[test]
fn idle_is_quiet_edge() {
    conformance::idle_is_quiet(env!("CARGO_BIN_EXE_epoll"), &["--edge"], 1_000);
}

#[test]
fn leaving_while_back_pressured_level() {
    conformance::leaving_while_back_pressured(env!("CARGO_BIN_EXE_epoll"), &[]);
}

#[test]
fn leaving_while_back_pressured_edge() {
    conformance::leaving_while_back_pressured(env!("CARGO_BIN_EXE_epoll"), &["--edge"]);
}

#[test]
fn stop_under_load_level() {
    conformance::stop_under_load(env!("CARGO_BIN_EXE_epoll"), &[]);
}

#[test]
fn stop_under_load_edge() {
    conformance::stop_under_load(env!("CARGO_BIN_EXE_epoll"), &["--edge"]);
}
