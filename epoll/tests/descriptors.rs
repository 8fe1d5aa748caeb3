//! Out of descriptors, in both modes: under `ulimit -n 64` a flood of connections makes accept
//! fail with EMFILE, and a level-triggered listener stays ready. The server must say so, keep
//! serving, not spin, and accept again once descriptors are free (see `conformance`).

const BIN: &str = env!("CARGO_BIN_EXE_epoll");

#[test]
fn level_out_of_descriptors() {
    conformance::out_of_descriptors(BIN, &[]);
}

#[test]
fn edge_out_of_descriptors() {
    conformance::out_of_descriptors(BIN, &["--edge"]);
}
