//! kqueue (macOS and the BSDs): the interest list lives in the kernel, one filter per
//! (descriptor, direction), changed with `kevent`; EVFILT_SIGNAL reports Ctrl-C.
//! Written against nix 0.32's sys::event; this workspace is built and tested on Linux only.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::sys::event::{EvFlags, EventFilter, FilterFlag, KEvent, Kqueue};
use nix::sys::signal::{SigSet, Signal};

use super::{Events, Key, Ready, deliver_pending};

/// The kqueue, a descriptor of its own.
pub struct State(Kqueue);

/// A kqueue that also reports the signals the caller blocks outside its waits.
pub fn new(wait_mask: Option<&SigSet>) -> nix::Result<State> {
    let kq = Kqueue::new()?;
    if let Some(wait_mask) = wait_mask {
        // The signals to watch: blocked now, but let through during a wait.
        let blocked = SigSet::thread_get_mask()?;
        let changes: Vec<KEvent> = Signal::iterator()
            .filter(|&s| blocked.contains(s) && !wait_mask.contains(s))
            .map(|s| {
                filter(
                    s as i32 as usize,
                    EventFilter::EVFILT_SIGNAL,
                    EvFlags::EV_ADD,
                )
            })
            .collect();
        kq.kevent(&changes, &mut [], None)?;
        // A signal that arrived before the filter existed is pending but was not seen.
        deliver_pending(wait_mask)?;
    }
    Ok(State(kq))
}

/// Adds and deletes the read and write filters of `fd` to go from `old` to `new`.
pub fn change(state: &State, fd: BorrowedFd, old: Events, new: Events) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    let mut changes = Vec::new();
    for (events, which) in [
        (Events::READ, EventFilter::EVFILT_READ),
        (Events::WRITE, EventFilter::EVFILT_WRITE),
    ] {
        match (old.contains(events), new.contains(events)) {
            (false, true) => changes.push(filter(fd as usize, which, EvFlags::EV_ADD)),
            (true, false) => changes.push(filter(fd as usize, which, EvFlags::EV_DELETE)),
            _ => {}
        }
    }
    // With no room for events, kevent applies the changes and returns at once.
    state.0.kevent(&changes, &mut [], None)?;
    Ok(())
}

pub fn wait<T>(
    state: &State,
    keys: &HashMap<RawFd, Key<T>>,
    timeout: Option<Duration>,
    wait_mask: Option<SigSet>,
) -> nix::Result<Ready> {
    // Up to two filters per descriptor, plus the signals.
    let empty = filter(0, EventFilter::EVFILT_READ, EvFlags::empty());
    let mut events = vec![empty; 2 * keys.len() + 4];
    let timeout = timeout.map(|t| *nix::sys::time::TimeSpec::from_duration(t).as_ref());
    let n = state.0.kevent(&[], &mut events, timeout)?;
    let mut ready: HashMap<RawFd, Events> = HashMap::new();
    for event in &events[..n] {
        let events = match event.filter() {
            Ok(EventFilter::EVFILT_READ) => Events::READ,
            Ok(EventFilter::EVFILT_WRITE) => Events::WRITE,
            Ok(EventFilter::EVFILT_SIGNAL) => {
                // The signal is still pending (blocked): let it through so the handler runs,
                // then answer like an interrupted wait.
                if let Some(mask) = &wait_mask {
                    deliver_pending(mask)?;
                }
                return Err(nix::errno::Errno::EINTR);
            }
            _ => continue,
        };
        let entry = ready.entry(event.ident() as RawFd).or_default();
        *entry = *entry | events;
    }
    Ok(ready.into_iter().collect())
}

fn filter(ident: usize, filter: EventFilter, flags: EvFlags) -> KEvent {
    KEvent::new(ident, filter, flags, FilterFlag::empty(), 0, 0)
}
