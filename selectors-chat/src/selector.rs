//! Python's `selectors` module, in Rust: one interface, four mechanisms underneath.
//!
//! ```text
//! let mut sel = Selector::new(Kind::best(), None)?;     // sel = selectors.DefaultSelector()
//! sel.register(&listener, Events::READ, accept)?;        // sel.register(sock, EVENT_READ, accept)
//! for (key, events) in sel.select(None)? {               // for key, mask in sel.select():
//!     (key.data)(key.fd, events);                        //     key.data(key.fileobj, mask)
//! }
//! ```
//!
//! The same semantics as Python's: `register` fails if the descriptor is already registered or
//! no event is asked for; `modify` and `unregister` fail if it is not registered; `select`
//! answers only with the events that were asked for; an interrupted wait answers nothing. Each
//! registration holds a key: the descriptor, its events and a `data` value of the caller's
//! choice (the lecture stores the function to call). As in Python, unregister a descriptor
//! *before* closing it: the selector only holds its number.
//!
//! What differs from one [`Kind`] to the next is where the interest list lives. epoll and
//! kqueue keep it in the kernel (`register` is a system call, `select` returns only the ready
//! ones); poll and select keep it here and hand all of it to the kernel on every wait.

use std::collections::HashMap;
use std::io;
use std::ops::{BitAnd, BitOr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::select::{FD_SETSIZE, FdSet};
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::sys::time::TimeSpec;

/// Readiness a caller can ask for: [`Events::READ`], [`Events::WRITE`], or both (`READ | WRITE`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Events(u8);

impl Events {
    pub const NONE: Events = Events(0);
    /// Python's `EVENT_READ`: a read (or accept) will not block.
    pub const READ: Events = Events(1);
    /// Python's `EVENT_WRITE`: a write will not block.
    pub const WRITE: Events = Events(2);

    pub fn contains(self, other: Events) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Events {
    type Output = Events;
    fn bitor(self, other: Events) -> Events {
        Events(self.0 | other.0)
    }
}

impl BitAnd for Events {
    type Output = Events;
    fn bitand(self, other: Events) -> Events {
        Events(self.0 & other.0)
    }
}

/// One registration, Python's `SelectorKey`: what is watched, for what, and the caller's data.
#[derive(Clone, Debug)]
pub struct Key<T> {
    pub fd: RawFd,
    pub events: Events,
    pub data: T,
}

/// The readiness mechanisms, each only on the platforms that have it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Kind {
    /// Linux: the interest list lives in the kernel; a wait returns only the ready descriptors.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Epoll,
    /// macOS and the BSDs: like epoll, plus filters for signals, timers and processes.
    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "netbsd",
        target_os = "openbsd"
    ))]
    Kqueue,
    /// Everywhere: an array of (descriptor, events) handed to the kernel on every wait.
    Poll,
    /// Everywhere: bitmaps of FD_SETSIZE (1024) bits, rebuilt on every wait; no descriptor past it.
    Select,
}

impl Kind {
    /// What Python's `DefaultSelector` picks: the best mechanism this platform has.
    pub fn best() -> Kind {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return Kind::Epoll;
        #[cfg(any(
            target_os = "macos",
            target_os = "ios",
            target_os = "freebsd",
            target_os = "dragonfly",
            target_os = "netbsd",
            target_os = "openbsd"
        ))]
        return Kind::Kqueue;
        #[allow(unreachable_code)]
        Kind::Poll
    }

    /// The system call that waits, for messages and the summary.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Kind::Epoll => "epoll",
            #[cfg(any(
                target_os = "macos",
                target_os = "ios",
                target_os = "freebsd",
                target_os = "dragonfly",
                target_os = "netbsd",
                target_os = "openbsd"
            ))]
            Kind::Kqueue => "kqueue",
            Kind::Poll => "poll",
            Kind::Select => "select",
        }
    }
}

/// The kernel object behind the kinds that keep their interest list in the kernel.
enum Mechanism {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Epoll(nix::sys::epoll::Epoll),
    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "netbsd",
        target_os = "openbsd"
    ))]
    Kqueue(nix::sys::event::Kqueue),
    /// poll and select need nothing but the keys themselves.
    Userspace,
}

/// Python's `BaseSelector`, with the mechanism chosen by [`Kind`].
pub struct Selector<T> {
    kind: Kind,
    mechanism: Mechanism,
    keys: HashMap<RawFd, Key<T>>,
    /// The signal mask to wait with (see [`Selector::new`]).
    wait_mask: Option<SigSet>,
}

// Ctrl-C, one approach for all four: the caller blocks SIGINT/SIGTERM outside the wait
// (`support::catch_signals`), and every wait unblocks them atomically for its own duration:
// epoll_pwait, ppoll, pselect. A signal that arrives while the loop is busy stays pending and
// interrupts the next wait that would sleep, so none is lost between "check the flag" and "go
// to sleep". But a wait that finds descriptors ready returns them at once, and Linux then puts
// the mask back with the signal still pending: a server that always has a ready client would
// never stop. So after such a wait, `deliver_pending` looks for a pending signal and lets it in.
// kqueue has no masked wait; instead it watches the blocked signals with EVFILT_SIGNAL (which
// fires although they are blocked) and, when one fires, unblocks them for a moment so that the
// handler runs. Only poll on a system without ppoll (macOS) has to open the mask around a plain
// poll; there it caps each wait at one second, so a signal landing in that gap costs at most a
// second of delay instead of a hang.

impl<T: Clone> Selector<T> {
    /// A selector of `kind`. `wait_mask` is the signal mask to install during each wait (the
    /// one `support::catch_signals` returns); `None` leaves the mask alone.
    pub fn new(kind: Kind, wait_mask: Option<SigSet>) -> io::Result<Selector<T>> {
        let mechanism = match kind {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Kind::Epoll => {
                use nix::sys::epoll::{Epoll, EpollCreateFlags};
                Mechanism::Epoll(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?)
            }
            #[cfg(any(
                target_os = "macos",
                target_os = "ios",
                target_os = "freebsd",
                target_os = "dragonfly",
                target_os = "netbsd",
                target_os = "openbsd"
            ))]
            Kind::Kqueue => Mechanism::Kqueue(kqueue::new(wait_mask.as_ref())?),
            Kind::Poll | Kind::Select => Mechanism::Userspace,
        };
        Ok(Selector {
            kind,
            mechanism,
            keys: HashMap::new(),
            wait_mask,
        })
    }

    /// How many descriptors are registered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key registered for `fd`, if any (Python's `get_key`).
    pub fn get_key(&self, fd: RawFd) -> Option<&Key<T>> {
        self.keys.get(&fd)
    }

    /// Starts watching `fd` for `events`; `data` comes back with every readiness report.
    pub fn register(&mut self, fd: impl AsFd, events: Events, data: T) -> io::Result<&Key<T>> {
        let fd = fd.as_fd();
        let raw = fd.as_raw_fd();
        if events.is_empty() {
            return Err(invalid(format!("register {raw}: no events asked for")));
        }
        if self.keys.contains_key(&raw) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("descriptor {raw} is already registered"),
            ));
        }
        // select's ceiling: an fd_set has a bit only for descriptors 0..FD_SETSIZE-1, and
        // setting a higher one would write past its end. Refuse at the door, with the reason.
        if self.kind == Kind::Select && raw >= FD_SETSIZE as RawFd {
            return Err(invalid(format!(
                "descriptor {raw} is past select's FD_SETSIZE ({FD_SETSIZE}); \
                 poll, epoll and kqueue have no such limit"
            )));
        }
        match &self.mechanism {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Mechanism::Epoll(epoll) => epoll.add(fd, epoll::event(raw, events))?,
            #[cfg(any(
                target_os = "macos",
                target_os = "ios",
                target_os = "freebsd",
                target_os = "dragonfly",
                target_os = "netbsd",
                target_os = "openbsd"
            ))]
            Mechanism::Kqueue(kq) => kqueue::change(kq, raw, Events::NONE, events)?,
            Mechanism::Userspace => {}
        }
        let key = Key {
            fd: raw,
            events,
            data,
        };
        Ok(self.keys.entry(raw).or_insert(key))
    }

    /// Changes what `fd` is watched for, and its data.
    pub fn modify(&mut self, fd: impl AsFd, events: Events, data: T) -> io::Result<&Key<T>> {
        let fd = fd.as_fd();
        let raw = fd.as_raw_fd();
        if events.is_empty() {
            return Err(invalid(format!("modify {raw}: no events asked for")));
        }
        let Some(old) = self.keys.get(&raw).map(|k| k.events) else {
            return Err(not_registered(raw));
        };
        if old != events {
            match &self.mechanism {
                #[cfg(any(target_os = "linux", target_os = "android"))]
                Mechanism::Epoll(epoll) => epoll.modify(fd, &mut epoll::event(raw, events))?,
                #[cfg(any(
                    target_os = "macos",
                    target_os = "ios",
                    target_os = "freebsd",
                    target_os = "dragonfly",
                    target_os = "netbsd",
                    target_os = "openbsd"
                ))]
                Mechanism::Kqueue(kq) => kqueue::change(kq, raw, old, events)?,
                Mechanism::Userspace => {}
            }
        }
        let key = self.keys.get_mut(&raw).expect("checked above");
        key.events = events;
        key.data = data;
        Ok(key)
    }

    /// Stops watching `fd` and hands back its key. Call it before closing the descriptor.
    pub fn unregister(&mut self, fd: impl AsFd) -> io::Result<Key<T>> {
        let fd = fd.as_fd();
        let raw = fd.as_raw_fd();
        let key = self.keys.remove(&raw).ok_or_else(|| not_registered(raw))?;
        match &self.mechanism {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Mechanism::Epoll(epoll) => epoll.delete(fd)?,
            #[cfg(any(
                target_os = "macos",
                target_os = "ios",
                target_os = "freebsd",
                target_os = "dragonfly",
                target_os = "netbsd",
                target_os = "openbsd"
            ))]
            Mechanism::Kqueue(kq) => kqueue::change(kq, raw, key.events, Events::NONE)?,
            Mechanism::Userspace => {}
        }
        Ok(key)
    }

    // ANCHOR: select
    /// Waits until at least one registered descriptor is ready, or `timeout` passes (`None`:
    /// no limit), and answers each ready key with the events it is ready for, among those it
    /// asked for. A signal interrupting the wait, or the timeout, gives an empty answer.
    pub fn select(&mut self, timeout: Option<Duration>) -> io::Result<Vec<(Key<T>, Events)>> {
        let ready = match &self.mechanism {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Mechanism::Epoll(epoll) => epoll::wait(epoll, self.keys.len(), timeout, self.wait_mask),
            #[cfg(any(
                target_os = "macos",
                target_os = "ios",
                target_os = "freebsd",
                target_os = "dragonfly",
                target_os = "netbsd",
                target_os = "openbsd"
            ))]
            Mechanism::Kqueue(kq) => kqueue::wait(kq, self.keys.len(), timeout, self.wait_mask),
            Mechanism::Userspace if self.kind == Kind::Poll => {
                wait_poll(&self.keys, timeout, self.wait_mask)
            }
            Mechanism::Userspace => wait_select(&self.keys, timeout, self.wait_mask),
        };
        let ready = match ready {
            Ok(ready) => ready,
            Err(Errno::EINTR) => return Ok(Vec::new()), // a signal: the caller's loop decides
            Err(e) => return Err(e.into()),
        };
        // No EINTR: a Ctrl-C already pending when descriptors were ready is pending still.
        if let Some(mask) = &self.wait_mask {
            deliver_pending(mask)?;
        }
        // Mask each answer with what was asked: a hang-up reported as "readable and writable"
        // must not wake a key that only asked to read with a WRITE it never wanted.
        Ok(ready
            .into_iter()
            .filter_map(|(fd, events)| {
                let key = self.keys.get(&fd)?;
                let events = events & key.events;
                (!events.is_empty()).then(|| (key.clone(), events))
            })
            .collect())
    }
    // ANCHOR_END: select
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn not_registered(fd: RawFd) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("descriptor {fd} is not registered"),
    )
}

/// Runs the handler of any pending signal that `wait_mask` lets in, as the wait would have:
/// installs the mask for a moment (POSIX delivers an unblocked pending signal before
/// pthread_sigmask returns), but only if `sigpending` shows one, so a busy loop pays one call.
fn deliver_pending(wait_mask: &SigSet) -> nix::Result<()> {
    let pending = support::pending_signals()?;
    if pending.iter().all(|signal| wait_mask.contains(signal)) {
        return Ok(()); // nothing pending, or nothing the wait would let in
    }
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(wait_mask), Some(&mut old))?;
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)
}

/// Descriptors the kernel found ready, with what they are ready for (not yet masked).
type Ready = Vec<(RawFd, Events)>;

/// Borrows a registered descriptor for one wait.
fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the contract of this module, as of Python's: a descriptor is unregistered before
    // it is closed, so every registered number names an open descriptor during the wait.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// What poll (and epoll, whose flags have the same values) reports, as Events. An error or a
/// hang-up counts as both readable and writable, as Python does: the caller's next read or
/// write then meets the error, instead of the descriptor being silently ignored.
fn from_poll_bits(revents: i32, readable: i32, writable: i32) -> Events {
    let mut events = Events::NONE;
    if revents & !writable != 0 {
        events = events | Events::READ;
    }
    if revents & !readable != 0 {
        events = events | Events::WRITE;
    }
    events
}

// ---------------------------------------------------------------------------------------------
// poll: the interest list is rebuilt into an array of pollfd on every wait.

fn wait_poll<T>(
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
    ppoll(&mut fds, timeout, mask)?;
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

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly"
))]
fn ppoll(fds: &mut [PollFd], timeout: Option<Duration>, mask: Option<SigSet>) -> nix::Result<()> {
    nix::poll::ppoll(fds, timeout.map(TimeSpec::from_duration), mask).map(drop)
}

/// No ppoll here (macOS): open the signal mask around a plain poll, capped at one second (see
/// the comment on Ctrl-C above).
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly"
)))]
fn ppoll(fds: &mut [PollFd], timeout: Option<Duration>, mask: Option<SigSet>) -> nix::Result<()> {
    use nix::poll::PollTimeout;
    let limit = |t: Duration| PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX);
    let Some(mask) = mask else {
        return nix::poll::poll(fds, timeout.map_or(PollTimeout::NONE, limit)).map(drop);
    };
    let cap = Duration::from_secs(1);
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&mask), Some(&mut old))?;
    let result = nix::poll::poll(fds, limit(timeout.map_or(cap, |t| t.min(cap))));
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    result.map(drop)
}

// ---------------------------------------------------------------------------------------------
// select: two bitmaps rebuilt on every wait (pselect overwrites them with its answer).

fn wait_select<T>(
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

// ---------------------------------------------------------------------------------------------
// epoll: the interest list lives in the kernel; each entry carries its descriptor as data.

#[cfg(any(target_os = "linux", target_os = "android"))]
mod epoll {
    use std::os::fd::{AsRawFd, RawFd};
    use std::time::Duration;

    use nix::errno::Errno;
    use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
    use nix::sys::signal::SigSet;

    use super::{Events, Ready, from_poll_bits};

    pub fn event(fd: RawFd, events: Events) -> EpollEvent {
        let mut flags = EpollFlags::empty();
        if events.contains(Events::READ) {
            flags |= EpollFlags::EPOLLIN;
        }
        if events.contains(Events::WRITE) {
            flags |= EpollFlags::EPOLLOUT;
        }
        EpollEvent::new(flags, fd as u64)
    }

    pub fn wait(
        epoll: &Epoll,
        registered: usize,
        timeout: Option<Duration>,
        mask: Option<SigSet>,
    ) -> nix::Result<Ready> {
        // Room for every registered descriptor, so one wait reports all that are ready.
        let mut events = vec![EpollEvent::empty(); registered.max(1)];
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
                epoll.0.as_raw_fd(),
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
}

// ---------------------------------------------------------------------------------------------
// kqueue: one kernel filter per (descriptor, direction); EVFILT_SIGNAL for Ctrl-C.
// Written against nix 0.32's sys::event; this workspace is built and tested on Linux only.

#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "netbsd",
    target_os = "openbsd"
))]
mod kqueue {
    use std::collections::HashMap;
    use std::os::fd::RawFd;
    use std::time::Duration;

    use nix::sys::event::{EvFlags, EventFilter, FilterFlag, KEvent, Kqueue};
    use nix::sys::signal::{SigSet, Signal};

    use super::{Events, Ready, deliver_pending};

    /// A kqueue that also reports the signals the caller blocks outside its waits.
    pub fn new(wait_mask: Option<&SigSet>) -> nix::Result<Kqueue> {
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
        Ok(kq)
    }

    fn filter(ident: usize, filter: EventFilter, flags: EvFlags) -> KEvent {
        KEvent::new(ident, filter, flags, FilterFlag::empty(), 0, 0)
    }

    /// Adds and deletes the read and write filters of `fd` to go from `old` to `new`.
    pub fn change(kq: &Kqueue, fd: RawFd, old: Events, new: Events) -> nix::Result<()> {
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
        kq.kevent(&changes, &mut [], None).map(drop)
    }

    pub fn wait(
        kq: &Kqueue,
        registered: usize,
        timeout: Option<Duration>,
        wait_mask: Option<SigSet>,
    ) -> nix::Result<Ready> {
        // Up to two filters per descriptor, plus the signals.
        let empty = filter(0, EventFilter::EVFILT_READ, EvFlags::empty());
        let mut events = vec![empty; 2 * registered + 4];
        let timeout = timeout.map(|t| *nix::sys::time::TimeSpec::from_duration(t).as_ref());
        let n = kq.kevent(&[], &mut events, timeout)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
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
    #[cfg(any(target_os = "linux", target_os = "android"))]
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
}
