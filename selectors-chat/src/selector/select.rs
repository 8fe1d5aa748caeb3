//! select: the interest list lives in the selector's keys, and is rebuilt into two bitmaps on
//! every wait (pselect overwrites them with its answer). No descriptor past FD_SETSIZE.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::sys::select::{FD_SETSIZE, FdSet};
use nix::sys::signal::SigSet;
use nix::sys::time::TimeSpec;

use super::{Events, Key, Ready, borrow, invalid};

/// Nothing: the keys are the interest list.
pub struct State;

pub fn new(_wait_mask: Option<&SigSet>) -> nix::Result<State> {
    Ok(State)
}

/// Nothing to tell the kernel, but select's ceiling: an fd_set has a bit only for descriptors
/// 0..FD_SETSIZE-1, and setting a higher one would write past its end. Refuse at the door.
pub fn change(_: &State, fd: BorrowedFd, _old: Events, _new: Events) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    if raw >= FD_SETSIZE as RawFd {
        return Err(invalid(format!(
            "descriptor {raw} is past select's FD_SETSIZE ({FD_SETSIZE}); \
             poll, epoll and kqueue have no such limit"
        )));
    }
    Ok(())
}

pub fn wait<T>(
    _: &State,
    keys: &HashMap<RawFd, Key<T>>,
    timeout: Option<Duration>,
    mask: Option<SigSet>,
) -> nix::Result<Ready> {
    let mut readfds = FdSet::new();
    let mut writefds = FdSet::new();
    for key in keys.values() {
        if key.events.contains(Events::READ) {
            readfds.insert(borrow(key.fd));
        }
        if key.events.contains(Events::WRITE) {
            writefds.insert(borrow(key.fd));
        }
    }
    let timeout = timeout.map(TimeSpec::from_duration);
    nix::sys::select::pselect(
        None,
        &mut readfds,
        &mut writefds,
        None,
        timeout.as_ref(),
        mask.as_ref(),
    )?;
    Ok(keys
        .keys()
        .filter_map(|&fd| {
            let mut events = Events::NONE;
            if readfds.contains(borrow(fd)) {
                events = events | Events::READ;
            }
            if writefds.contains(borrow(fd)) {
                events = events | Events::WRITE;
            }
            (!events.is_empty()).then_some((fd, events))
        })
        .collect())
}
