//! Out of descriptors, for both backends: under `ulimit -n 64` a flood of connections makes
//! accept fail with EMFILE. The server must say so, keep serving, not spin, and accept again
//! once descriptors are free (see `conformance`).

const BIN: &str = env!("CARGO_BIN_EXE_aio");

#[test]
fn uring_out_of_descriptors() {
    conformance::out_of_descriptors(BIN, &["--backend", "uring"]);
}

#[test]
fn posix_out_of_descriptors() {
    conformance::out_of_descriptors(BIN, &["--backend", "posix"]);
}
