//! The contract, with as many concurrent clients as fit under select's ceiling, and the
//! event-driven checks.
conformance::suite!(
    select,
    env!("CARGO_BIN_EXE_select"),
    [],
    clients = 900,
    event_driven(idle = 100)
);
