//! `ppoll` is poll plus a signal mask installed for the length of the wait. Linux, Android,
//! FreeBSD and DragonFly have it; macOS does not, and gets a stand-in here, so that the poll
//! chapter builds everywhere while its main.rs reads the same.

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly"
))]
pub use nix::poll::ppoll;

/// The stand-in: open the mask around a plain poll. A Ctrl-C landing between the two calls is
/// the race ppoll closes; the wait is capped at one second, so such a Ctrl-C is late by a
/// second at most, not for ever.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly"
)))]
pub fn ppoll(
    fds: &mut [nix::poll::PollFd],
    _: Option<nix::sys::time::TimeSpec>,
    mask: Option<nix::sys::signal::SigSet>,
) -> nix::Result<nix::libc::c_int> {
    let mask = mask.unwrap_or_else(nix::sys::signal::SigSet::empty);
    let blocked = mask.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_SETMASK)?;
    let answer = nix::poll::poll(fds, nix::poll::PollTimeout::from(1000u16));
    blocked.thread_set_mask()?;
    answer
}
