//! The contract, with as many concurrent clients as fit under select's ceiling.
conformance::suite!(select, env!("CARGO_BIN_EXE_select"), [], clients = 900);

#[test]
fn back_pressure() {
    conformance::back_pressure(env!("CARGO_BIN_EXE_select"), &[], 32);
}

#[test]
fn idle_is_quiet() {
    conformance::idle_is_quiet(env!("CARGO_BIN_EXE_select"), &[], 100);
}

#[test]
fn out_of_descriptors() {
    conformance::out_of_descriptors(env!("CARGO_BIN_EXE_select"), &[]);
}

#[test]
fn leaving_while_back_pressured() {
    conformance::leaving_while_back_pressured(env!("CARGO_BIN_EXE_select"), &[]);
}

#[test]
fn stop_under_load() {
    conformance::stop_under_load(env!("CARGO_BIN_EXE_select"), &[]);
}
