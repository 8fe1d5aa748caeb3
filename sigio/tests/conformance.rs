//! The contract, with 500 concurrent clients (each of their messages is one queued signal), and
//! the event-driven checks.
conformance::suite!(
    sigio,
    env!("CARGO_BIN_EXE_sigio"),
    [],
    clients = 500,
    event_driven(idle = 100)
);
