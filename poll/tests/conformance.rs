//! The contract, with five times select's ceiling in clients (poll has no FD_SETSIZE), and the
//! event-driven checks.
conformance::suite!(
    poll,
    env!("CARGO_BIN_EXE_poll"),
    [],
    clients = 5000,
    event_driven(idle = 100)
);
