//! epoll: the interest list lives in the kernel, changed one `epoll_ctl` at a time; each entry
//! carries its descriptor as data, and a wait returns only the ready ones.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::SigSet;

use super::{Events, Key, Ready, from_poll_bits};

/// The epoll instance, a descriptor of its own.
pub struct State(Epoll);

pub fn new(_wait_mask: Option<&SigSet>) -> nix::Result<State> {
    Ok(State(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?))
}

/// Adds, modifies or deletes `fd`'s entry in the kernel's interest list.
pub fn change(state: &State, fd: BorrowedFd, old: Events, new: Events) -> io::Result<()> {
    let mut flags = EpollFlags::empty();
    if new.contains(Events::READ) {
        flags |= EpollFlags::EPOLLIN;
    }
    if new.contains(Events::WRITE) {
        flags |= EpollFlags::EPOLLOUT;
    }
    let mut event = EpollEvent::new(flags, fd.as_raw_fd() as u64);
    match (old.is_empty(), new.is_empty()) {
        (true, _) => state.0.add(fd, event)?,
        (false, true) => state.0.delete(fd)?,
        (false, false) => state.0.modify(fd, &mut event)?,
    }
    Ok(())
}

pub fn wait<T>(
    state: &State,
    keys: &HashMap<RawFd, Key<T>>,
    timeout: Option<Duration>,
    mask: Option<SigSet>,
) -> nix::Result<Ready> {
    // Room for every registered descriptor, so one wait reports all that are ready.
    let mut events = vec![EpollEvent::empty(); keys.len().max(1)];
    // Rounded up, so that a 0.5 ms (or 1 ns) timeout waits rather than spins.
    let ms = timeout.map_or(-1, |t| {
        t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
    });
    let mask_ptr = mask
        .as_ref()
        .map_or(std::ptr::null(), |m| m.as_ref() as *const _);
    // nix 0.32 has no epoll_pwait, so this one call goes to libc.
    // SAFETY: `events` is a live buffer of `events.len()` EpollEvent, which nix declares
    // #[repr(transparent)] over libc::epoll_event; `mask_ptr` is null or points to `mask`.
    let n = unsafe {
        libc::epoll_pwait(
            state.0.0.as_raw_fd(),
            events.as_mut_ptr().cast(),
            events.len() as i32,
            ms,
            mask_ptr,
        )
    };
    let n = Errno::result(n)? as usize;
    let (epollin, epollout) = (EpollFlags::EPOLLIN.bits(), EpollFlags::EPOLLOUT.bits());
    Ok(events[..n]
        .iter()
        .map(|e| {
            let events = from_poll_bits(e.events().bits(), epollin, epollout);
            (e.data() as RawFd, events)
        })
        .collect())
}
