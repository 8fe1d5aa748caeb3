//! `epoll_pwait` is to `epoll_wait` what `ppoll` is to `poll`, and `pselect` to `select`: the
//! wait with a signal mask installed for its length, so that Ctrl-C can interrupt the wait and
//! only it. nix 0.32 wraps epoll_wait only, so this file calls libc directly, once for every
//! server that waits in epoll: this crate's two, `main.rs` (level-triggered) and `edge.rs`, and
//! the reactor chapter's loops, which include this file by path (`reactor/src/main.rs`).

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent};
use nix::sys::signal::SigSet;

// ANCHOR: epoll_pwait
/// epoll_wait with a signal mask installed for the length of the wait, as `pselect` and
/// `ppoll` do: nix 0.32 wraps epoll_wait only, so this calls libc directly. Waits for ever.
pub fn epoll_pwait(epoll: &Epoll, events: &mut [EpollEvent], mask: &SigSet) -> nix::Result<usize> {
    let max = events.len().min(i32::MAX as usize) as i32;
    // SAFETY: EpollEvent is #[repr(transparent)] over libc::epoll_event, so `events` is an
    // array of `max` epoll_events for the kernel to fill; the mask is a valid sigset_t. Both
    // outlive the call.
    let n = unsafe {
        libc::epoll_pwait(
            epoll.0.as_raw_fd(),
            events.as_mut_ptr().cast::<libc::epoll_event>(),
            max,
            -1,
            mask.as_ref(),
        )
    };
    Errno::result(n).map(|n| n as usize)
}
// ANCHOR_END: epoll_pwait
