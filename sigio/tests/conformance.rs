//! The contract, with 500 concurrent clients: each of their messages is one queued signal.
conformance::suite!(sigio, env!("CARGO_BIN_EXE_sigio"), [], clients = 500);

#[test]
fn back_pressure() {
    conformance::back_pressure(env!("CARGO_BIN_EXE_sigio"), &[], 32);
}

#[test]
fn idle_is_quiet() {
    conformance::idle_is_quiet(env!("CARGO_BIN_EXE_sigio"), &[], 100);
}

#[test]
fn out_of_descriptors() {
    conformance::out_of_descriptors(env!("CARGO_BIN_EXE_sigio"), &[]);
}

#[test]
fn leaving_while_back_pressured() {
    conformance::leaving_while_back_pressured(env!("CARGO_BIN_EXE_sigio"), &[]);
}

#[test]
fn stop_under_load() {
    conformance::stop_under_load(env!("CARGO_BIN_EXE_sigio"), &[]);
}
