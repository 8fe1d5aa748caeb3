//! The contract, with 10,000 concurrent clients, and the event-driven checks (out of
//! descriptors among them: under `ulimit -n 64` a level-triggered listener stays ready, an
//! edge-triggered one gets no new edge), level-triggered (main.rs) and edge-triggered (edge.rs).
conformance::suite!(
    level,
    env!("CARGO_BIN_EXE_epoll"),
    [],
    clients = 10_000,
    event_driven(idle = 1_000)
);
conformance::suite!(
    edge,
    env!("CARGO_BIN_EXE_epoll"),
    ["--edge"],
    clients = 10_000,
    event_driven(idle = 1_000)
);
