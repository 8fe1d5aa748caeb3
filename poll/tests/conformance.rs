//! The contract, with five times select's ceiling in clients: poll has no FD_SETSIZE.
conformance::suite!(poll, env!("CARGO_BIN_EXE_poll"), [], clients = 5000);

#[test]
fn back_pressure() {
    conformance::back_pressure(env!("CARGO_BIN_EXE_poll"), &[], 32);
}

#[test]
fn idle_is_quiet() {
    conformance::idle_is_quiet(env!("CARGO_BIN_EXE_poll"), &[], 100);
}

#[test]
fn out_of_descriptors() {
    conformance::out_of_descriptors(env!("CARGO_BIN_EXE_poll"), &[]);
}

#[test]
fn leaving_while_back_pressured() {
    conformance::leaving_while_back_pressured(env!("CARGO_BIN_EXE_poll"), &[]);
}

#[test]
fn stop_under_load() {
    conformance::stop_under_load(env!("CARGO_BIN_EXE_poll"), &[]);
}
