//! The selector's own tests: Python's semantics, on every kind this platform has.

use super::*;
use nix::sys::select::FD_SETSIZE;
use nix::sys::signal::{SigmaskHow, pthread_sigmask};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Every kind this platform has.
fn kinds() -> Vec<Kind> {
    use clap::ValueEnum;
    Kind::value_variants().to_vec()
}

/// Ready events by descriptor, after a short wait.
fn ready(sel: &mut Selector<&'static str>) -> Vec<(RawFd, Events, &'static str)> {
    let mut got: Vec<_> = sel
        .select(Some(Duration::from_millis(50)))
        .unwrap()
        .into_iter()
        .map(|(key, events)| (key.fd, events, key.data))
        .collect();
    got.sort_by_key(|(fd, ..)| *fd);
    got
}

#[test]
fn best_is_the_platforms_best() {
    #[cfg(target_os = "linux")]
    assert_eq!(Kind::best(), Kind::Epoll);
    assert!(kinds().contains(&Kind::best()));
}

#[test]
fn register_twice_or_for_nothing_is_refused() {
    for kind in kinds() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut sel = Selector::new(kind, None).unwrap();
        let err = sel.register(&a, Events::NONE, "a").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{kind:?}");
        sel.register(&a, Events::READ, "a").unwrap();
        let err = sel.register(&a, Events::WRITE, "again").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{kind:?}");
        // The first registration is untouched.
        let key = sel.get_key(a.as_raw_fd()).unwrap();
        assert_eq!((key.events, key.data), (Events::READ, "a"), "{kind:?}");
        assert_eq!(sel.len(), 1);
    }
}

#[test]
fn answers_are_masked_to_what_was_asked() {
    for kind in kinds() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut sel = Selector::new(kind, None).unwrap();
        // `a` is writable at once, but only READ was asked for: nothing to say yet.
        sel.register(&a, Events::READ, "a").unwrap();
        assert_eq!(ready(&mut sel), [], "{kind:?}");
        // Now readable and writable: the answer is READ only, with the data registered.
        b.write_all(b"x").unwrap();
        let fd = a.as_raw_fd();
        assert_eq!(ready(&mut sel), [(fd, Events::READ, "a")], "{kind:?}");
    }
}

#[test]
fn modify_changes_events_and_data() {
    for kind in kinds() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let mut sel = Selector::new(kind, None).unwrap();
        let err = sel.modify(&a, Events::READ, "a").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{kind:?}");
        sel.register(&a, Events::READ, "a").unwrap();
        sel.register(&c, Events::READ, "c").unwrap();
        b.write_all(b"x").unwrap();
        let (fa, fc) = (a.as_raw_fd(), c.as_raw_fd());
        sel.modify(&a, Events::WRITE, "a2").unwrap();
        sel.modify(&c, Events::READ | Events::WRITE, "c2").unwrap();
        let mut want = vec![(fa, Events::WRITE, "a2"), (fc, Events::WRITE, "c2")];
        want.sort_by_key(|(fd, ..)| *fd);
        assert_eq!(ready(&mut sel), want, "{kind:?}");
        sel.modify(&a, Events::READ | Events::WRITE, "a3").unwrap();
        sel.modify(&c, Events::READ, "c3").unwrap();
        assert_eq!(
            ready(&mut sel),
            [(fa, Events::READ | Events::WRITE, "a3")],
            "{kind:?}"
        );
        let err = sel.modify(&a, Events::NONE, "a").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{kind:?}");
    }
}

#[test]
fn unregister_stops_the_reports() {
    for kind in kinds() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut sel = Selector::new(kind, None).unwrap();
        sel.register(&a, Events::READ | Events::WRITE, "a").unwrap();
        b.write_all(b"x").unwrap();
        assert_eq!(ready(&mut sel).len(), 1, "{kind:?}");
        let key = sel.unregister(&a).unwrap();
        assert_eq!((key.fd, key.data), (a.as_raw_fd(), "a"), "{kind:?}");
        assert_eq!(ready(&mut sel), [], "{kind:?}");
        let err = sel.unregister(&a).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{kind:?}");
        // Registered again, it is reported again.
        sel.register(&a, Events::READ, "again").unwrap();
        assert_eq!(ready(&mut sel)[0].2, "again", "{kind:?}");
    }
}

#[test]
fn hang_up_wakes_a_reader() {
    for kind in kinds() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut sel = Selector::new(kind, None).unwrap();
        sel.register(&a, Events::READ, "a").unwrap();
        drop(b);
        assert_eq!(
            ready(&mut sel),
            [(a.as_raw_fd(), Events::READ, "a")],
            "{kind:?}"
        );
    }
}

#[test]
fn a_timeout_answers_nothing() {
    for kind in kinds() {
        let mut sel: Selector<()> = Selector::new(kind, None).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        sel.register(&a, Events::READ, ()).unwrap();
        let started = std::time::Instant::now();
        assert!(
            sel.select(Some(Duration::from_millis(30)))
                .unwrap()
                .is_empty()
        );
        assert!(started.elapsed() >= Duration::from_millis(25), "{kind:?}");
    }
}

#[test]
#[cfg(epoll)]
fn epoll_rounds_a_timeout_under_a_millisecond_up() {
    let mut sel: Selector<()> = Selector::new(Kind::Epoll, None).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    sel.register(&a, Events::READ, ()).unwrap();
    // epoll counts in milliseconds: 1 ns must become 1 ms, not 0 (which would spin).
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert!(
            sel.select(Some(Duration::from_nanos(1)))
                .unwrap()
                .is_empty()
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(10));
}

/// Blocks SIGUSR1 in this thread, with a handler that records it; returns the wait mask
/// that lets it in, and the mask to restore.
fn catch_usr1() -> (SigSet, SigSet) {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, Signal, sigaction};
    extern "C" fn on_usr1(_: libc::c_int) {
        CAUGHT.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let action = SigAction::new(
        SigHandler::Handler(on_usr1),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing but an atomic store.
    unsafe { sigaction(Signal::SIGUSR1, &action) }.unwrap();
    let mut usr1 = SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&usr1), Some(&mut old)).unwrap();
    let mut wait_mask = old;
    wait_mask.remove(Signal::SIGUSR1);
    (wait_mask, old)
}

static CAUGHT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sends SIGUSR1 to this thread (blocked: it stays pending), then runs `select`.
fn select_with_usr1_pending(kind: Kind, ready: bool) -> (usize, bool) {
    use std::sync::atomic::Ordering;
    // One test at a time: CAUGHT is shared.
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (wait_mask, old) = catch_usr1();
    let mut sel = Selector::new(kind, Some(wait_mask)).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    // A fresh socket is writable at once, never readable here.
    let events = if ready { Events::WRITE } else { Events::READ };
    sel.register(&a, events, ()).unwrap();
    CAUGHT.store(false, Ordering::SeqCst);
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR1).unwrap();
    let n = sel.select(Some(Duration::from_secs(10))).unwrap().len();
    let caught = CAUGHT.load(Ordering::SeqCst);
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).unwrap();
    (n, caught)
}

#[test]
fn an_interrupted_wait_answers_nothing() {
    for kind in kinds() {
        let started = std::time::Instant::now();
        assert_eq!(select_with_usr1_pending(kind, false), (0, true), "{kind:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{kind:?}");
    }
}

#[test]
fn a_pending_signal_is_let_in_even_when_descriptors_are_ready() {
    for kind in kinds() {
        assert_eq!(select_with_usr1_pending(kind, true), (1, true), "{kind:?}");
    }
}

#[test]
fn select_refuses_past_fd_setsize() {
    conformance::raise_descriptor_limit();
    let (a, _b) = UnixStream::pair().unwrap();
    // SAFETY: F_DUPFD returns a new descriptor (or -1), which the OwnedFd then owns.
    let high = unsafe { libc::fcntl(a.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FD_SETSIZE as i32) };
    assert!(
        high >= FD_SETSIZE as i32,
        "fcntl: {}",
        io::Error::last_os_error()
    );
    let high = unsafe { OwnedFd::from_raw_fd(high) };
    let mut sel = Selector::new(Kind::Select, None).unwrap();
    let err = sel.register(&high, Events::READ, ()).unwrap_err();
    assert!(err.to_string().contains("FD_SETSIZE (1024)"), "{err}");
    assert!(sel.get_key(high.as_raw_fd()).is_none());
    // The others take it.
    let mut sel = Selector::new(Kind::Poll, None).unwrap();
    sel.register(&high, Events::READ, ()).unwrap();
}
