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
//! ones); poll and select keep it here and hand all of it to the kernel on every wait. Each
//! mechanism is one file under `selector/`, as redis's `ae_epoll.c` and `ae_select.c` are, with
//! the same three functions in the same order: `new`, `change` (the interest list goes from
//! `old` to `new` events), `wait`. Diff them: `diff selector/poll.rs selector/epoll.rs`.

use std::collections::HashMap;
use std::io;
use std::ops::{BitAnd, BitOr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};

#[cfg(epoll)]
mod epoll;
#[cfg(kqueue)]
mod kqueue;
mod poll;
mod select;
#[cfg(test)]
mod tests;

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
    #[cfg(epoll)]
    Epoll,
    /// macOS and the BSDs: like epoll, plus filters for signals, timers and processes.
    #[cfg(kqueue)]
    Kqueue,
    /// Everywhere: an array of (descriptor, events) handed to the kernel on every wait.
    Poll,
    /// Everywhere: bitmaps of FD_SETSIZE (1024) bits, rebuilt on every wait; no descriptor past it.
    Select,
}

impl Kind {
    /// What Python's `DefaultSelector` picks: the best mechanism this platform has.
    pub fn best() -> Kind {
        #[cfg(epoll)]
        return Kind::Epoll;
        #[cfg(kqueue)]
        return Kind::Kqueue;
        #[allow(unreachable_code)]
        Kind::Poll
    }

    /// The system call that waits, for messages and the summary.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(epoll)]
            Kind::Epoll => "epoll",
            #[cfg(kqueue)]
            Kind::Kqueue => "kqueue",
            Kind::Poll => "poll",
            Kind::Select => "select",
        }
    }
}

/// The mechanism chosen, with its state: the kernel object of epoll and kqueue, nothing for
/// poll and select, which need nothing but the keys themselves.
enum Mechanism {
    #[cfg(epoll)]
    Epoll(epoll::State),
    #[cfg(kqueue)]
    Kqueue(kqueue::State),
    Poll(poll::State),
    Select(select::State),
}

/// Python's `BaseSelector`, with the mechanism chosen by [`Kind`].
pub struct Selector<T> {
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
        let mask = wait_mask.as_ref();
        let mechanism = match kind {
            #[cfg(epoll)]
            Kind::Epoll => Mechanism::Epoll(epoll::new(mask)?),
            #[cfg(kqueue)]
            Kind::Kqueue => Mechanism::Kqueue(kqueue::new(mask)?),
            Kind::Poll => Mechanism::Poll(poll::new(mask)?),
            Kind::Select => Mechanism::Select(select::new(mask)?),
        };
        Ok(Selector {
            mechanism,
            keys: HashMap::new(),
            wait_mask,
        })
    }

    /// The mechanism underneath, for messages.
    pub fn kind(&self) -> Kind {
        match self.mechanism {
            #[cfg(epoll)]
            Mechanism::Epoll(_) => Kind::Epoll,
            #[cfg(kqueue)]
            Mechanism::Kqueue(_) => Kind::Kqueue,
            Mechanism::Poll(_) => Kind::Poll,
            Mechanism::Select(_) => Kind::Select,
        }
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
        self.change(fd, Events::NONE, events)?;
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
            self.change(fd, old, events)?;
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
        self.change(fd, key.events, Events::NONE)?;
        Ok(key)
    }

    /// Tells the mechanism that `fd`'s events go from `old` to `new` (NONE: not registered).
    fn change(&self, fd: BorrowedFd, old: Events, new: Events) -> io::Result<()> {
        match &self.mechanism {
            #[cfg(epoll)]
            Mechanism::Epoll(state) => epoll::change(state, fd, old, new),
            #[cfg(kqueue)]
            Mechanism::Kqueue(state) => kqueue::change(state, fd, old, new),
            Mechanism::Poll(state) => poll::change(state, fd, old, new),
            Mechanism::Select(state) => select::change(state, fd, old, new),
        }
    }

    // ANCHOR: select
    /// Waits until at least one registered descriptor is ready, or `timeout` passes (`None`:
    /// no limit), and answers each ready key with the events it is ready for, among those it
    /// asked for. A signal interrupting the wait, or the timeout, gives an empty answer.
    pub fn select(&mut self, timeout: Option<Duration>) -> io::Result<Vec<(Key<T>, Events)>> {
        let (keys, mask) = (&self.keys, self.wait_mask);
        let ready = match &self.mechanism {
            #[cfg(epoll)]
            Mechanism::Epoll(state) => epoll::wait(state, keys, timeout, mask),
            #[cfg(kqueue)]
            Mechanism::Kqueue(state) => kqueue::wait(state, keys, timeout, mask),
            Mechanism::Poll(state) => poll::wait(state, keys, timeout, mask),
            Mechanism::Select(state) => select::wait(state, keys, timeout, mask),
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
