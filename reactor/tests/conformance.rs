//! The contract in every combination of a pool and several loops: handlers in the loop or on
//! four workers, one loop or two on one port. Each module runs the whole suite, and the checks
//! that every event-driven server passes (back-pressure, idle CPU, clients that leave while
//! back-pressured, Ctrl-C under load, out of descriptors).

macro_rules! combination {
    ($name:ident, [$($arg:expr),*]) => {
        mod $name {
            const BIN: &str = env!("CARGO_BIN_EXE_reactor");
            const ARGS: &[&str] = &[$($arg),*];

            conformance::suite!(contract, env!("CARGO_BIN_EXE_reactor"), [$($arg),*], clients = 2_000);

            #[test]
            fn back_pressure() {
                conformance::back_pressure(BIN, ARGS, 32);
            }

            #[test]
            fn idle_is_quiet() {
                conformance::idle_is_quiet(BIN, ARGS, 1_000);
            }

            #[test]
            fn leaving_while_back_pressured() {
                conformance::leaving_while_back_pressured(BIN, ARGS);
            }

            #[test]
            fn stop_under_load() {
                conformance::stop_under_load(BIN, ARGS);
            }

            #[test]
            fn out_of_descriptors() {
                conformance::out_of_descriptors(BIN, ARGS);
            }
        }
    };
}

combination!(in_loop, []);
combination!(workers, ["--workers", "4"]);
combination!(loops, ["--loops", "2"]);
combination!(workers_and_loops, ["--workers", "4", "--loops", "2"]);
