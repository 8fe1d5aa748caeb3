//! The signal plumbing of the sigio server (Linux only): the signal each socket sends, arming a
//! socket to send it (`F_SETOWN`, `F_SETSIG`, `O_ASYNC`), blocking the signals the loop takes,
//! and taking the next one with its siginfo. nix 0.32 wraps none of F_SETOWN, F_SETSIG or
//! sigtimedwait, hence the libc calls.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use libc::c_int;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{SigSet, Signal};

// ANCHOR: signals
/// The signal each socket sends. A real-time one, because those queue (one per event, each with
/// its own siginfo) where classic signals merge into one; SIGRTMIN itself is left to libraries.
pub fn io_signal() -> c_int {
    libc::SIGRTMIN() + 1
}

/// F_SETSIG from <fcntl.h> (Linux, every architecture); the libc crate does not export it.
const F_SETSIG: c_int = 10;

/// Makes `fd` non-blocking and signal-driven: ready events raise `io_signal()` at this process.
/// Owner and signal are set before O_ASYNC, so that even the first signal is the right one.
pub fn arm(fd: BorrowedFd) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    let check = |r: c_int| Errno::result(r).map(drop);
    // nix 0.32's FcntlArg has neither F_SETOWN nor F_SETSIG: plain libc::fcntl.
    // SAFETY: fcntl with integer arguments, on a descriptor that stays open for the call.
    check(unsafe { libc::fcntl(raw, libc::F_SETOWN, std::process::id() as c_int) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(raw, F_SETSIG, io_signal()) })?;
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(
        fd,
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK | OFlag::O_ASYNC),
    )?;
    Ok(())
}

/// Blocks, in this (the only) thread, every signal the loop waits for, and returns that set:
/// `io_signal()`, SIGIO (its stand-in when the queue is full), SIGINT and SIGTERM.
pub fn block_signals() -> nix::Result<SigSet> {
    let named: SigSet = [Signal::SIGIO, Signal::SIGINT, Signal::SIGTERM]
        .into_iter()
        .collect();
    let mut raw = *named.as_ref();
    // nix's SigSet holds only named signals; a real-time one goes in with libc.
    // SAFETY: `raw` is an initialised sigset_t and io_signal() a valid signal number.
    Errno::result(unsafe { libc::sigaddset(&mut raw, io_signal()) })?;
    // SAFETY: `raw` was built by sigemptyset/sigaddset.
    let set = unsafe { SigSet::from_sigset_t_unchecked(raw) };
    set.thread_block()?;
    Ok(set)
}

/// Takes the next pending signal of `set`, with its siginfo: sleeping until there is one
/// (sigwaitinfo), or, if `sleep` is false, failing with EAGAIN at once if there is none
/// (sigtimedwait with a zero timeout). Not nix's `SigSet::wait`, which is sigwait and keeps
/// only the signal's number; not a signalfd either, which would turn the signals back into a
/// descriptor to wait on.
pub fn next_signal(set: &SigSet, sleep: bool) -> nix::Result<libc::siginfo_t> {
    let mut info = MaybeUninit::<libc::siginfo_t>::uninit();
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let timeout = if sleep { std::ptr::null() } else { &zero };
    // SAFETY: `set` is a valid sigset_t, `info` has room for the answer, and `timeout` is null
    // (no limit) or points to `zero`, which outlives the call.
    Errno::result(unsafe { libc::sigtimedwait(set.as_ref(), info.as_mut_ptr(), timeout) })?;
    // SAFETY: sigwaitinfo succeeded, so it filled `info`.
    Ok(unsafe { info.assume_init() })
}

// ANCHOR_END: signals
