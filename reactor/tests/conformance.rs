//! The contract and the event-driven checks (back-pressure, idle CPU, out of descriptors,
//! clients that leave while back-pressured, Ctrl-C under load) in every combination of a pool
//! and several loops: handlers in the loop or on four workers, one loop or two on one port.
conformance::suite!(
    in_loop,
    env!("CARGO_BIN_EXE_reactor"),
    [],
    clients = 2_000,
    event_driven(idle = 1_000)
);
conformance::suite!(
    workers,
    env!("CARGO_BIN_EXE_reactor"),
    ["--workers", "4"],
    clients = 2_000,
    event_driven(idle = 1_000)
);
conformance::suite!(
    loops,
    env!("CARGO_BIN_EXE_reactor"),
    ["--loops", "2"],
    clients = 2_000,
    event_driven(idle = 1_000)
);
conformance::suite!(
    workers_and_loops,
    env!("CARGO_BIN_EXE_reactor"),
    ["--workers", "4", "--loops", "2"],
    clients = 2_000,
    event_driven(idle = 1_000)
);
