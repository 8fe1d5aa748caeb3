//! poll: the interest list lives in the selector's keys, and is rebuilt into an array of pollfd
//! on every wait; the kernel answers beside each entry.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::SigSet;
use nix::sys::time::TimeSpec;

use super::{Events, Key, Ready, borrow, from_poll_bits};

// ppoll, or the poll chapter's stand-in where the platform has none (macOS): one file for both.
#[path = "../../../poll/src/compat.rs"]
mod compat;

/// Nothing: the keys are the interest list.
pub struct State;

pub fn new(_wait_mask: Option<&SigSet>) -> nix::Result<State> {
    Ok(State)
}

/// Nothing to tell the kernel: the next wait hands it the whole list.
pub fn change(_: &State, _fd: BorrowedFd, _old: Events, _new: Events) -> io::Result<()> {
    Ok(())
}

pub fn wait<T>(
    _: &State,
    keys: &HashMap<RawFd, Key<T>>,
    timeout: Option<Duration>,
    mask: Option<SigSet>,
) -> nix::Result<Ready> {
    let mut fds: Vec<PollFd> = keys
        .values()
        .map(|key| {
            let mut flags = PollFlags::empty();
            if key.events.contains(Events::READ) {
                flags |= PollFlags::POLLIN;
            }
            if key.events.contains(Events::WRITE) {
                flags |= PollFlags::POLLOUT;
            }
            PollFd::new(borrow(key.fd), flags)
        })
        .collect();
    compat::ppoll(&mut fds, timeout.map(TimeSpec::from_duration), mask)?;
    let (pollin, pollout) = (PollFlags::POLLIN.bits(), PollFlags::POLLOUT.bits());
    Ok(fds
        .iter()
        .filter_map(|pfd| {
            let revents = pfd.revents()?.bits();
            (revents != 0).then(|| {
                let events = from_poll_bits(revents.into(), pollin.into(), pollout.into());
                (pfd.as_fd().as_raw_fd(), events)
            })
        })
        .collect())
}
