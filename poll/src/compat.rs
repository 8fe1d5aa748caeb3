//! `ppoll` is poll plus a signal mask installed for the length of the wait. Linux, Android,
//! FreeBSD and DragonFly have it; macOS does not, and gets a stand-in here, so that the poll
//! chapter builds everywhere while its main.rs reads the same. The selectors chapter's poll
//! backend uses this very file (`#[path]`), so the stand-in is written once.

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly"
))]
pub use nix::poll::ppoll;

/// The stand-in: open the mask around a plain poll. A Ctrl-C landing between the two calls is
/// the race ppoll closes; with a mask, the wait is capped at one second, so such a Ctrl-C is
/// late by a second at most, not for ever. Without a mask, it is a plain poll.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly"
)))]
pub fn ppoll(
    fds: &mut [nix::poll::PollFd],
    timeout: Option<nix::sys::time::TimeSpec>,
    mask: Option<nix::sys::signal::SigSet>,
) -> nix::Result<nix::libc::c_int> {
    use nix::poll::{PollTimeout, poll};
    use std::time::Duration;
    let limit = |t: Duration| PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX);
    let timeout = timeout.map(Duration::from);
    let Some(mask) = mask else {
        return poll(fds, timeout.map_or(PollTimeout::NONE, limit));
    };
    let cap = Duration::from_secs(1);
    let blocked = mask.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_SETMASK)?;
    let answer = poll(fds, limit(timeout.map_or(cap, |t| t.min(cap))));
    blocked.thread_set_mask()?;
    answer
}
