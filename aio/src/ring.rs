//! The rings themselves, for `uring.rs`: set-up (and why it failed), the table of operations in
//! flight, and the one system call, `io_uring_enter`, made only when it is needed.
//!
//! Each operation in flight is one `Op` value in `ops`, found again by its completion's
//! `user_data` (its index): the value says what the result is about.
//!
//! With `--sqpoll` (IORING_SETUP_SQPOLL) a kernel thread, `iou-sqp-PID`, takes submissions off
//! the ring as soon as they are queued, so handing them over costs no system call; the loop
//! then watches the completion ring for a while before it pays one to sleep. After SQ_IDLE_MS
//! without work the thread sleeps too, and says so (IORING_SQ_NEED_WAKEUP): the next
//! submission must wake it, and that is counted.

use std::io;
use std::time::{Duration, Instant};

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::Context;
use io_uring::types::Fd;
use io_uring::{IoUring, cqueue, opcode, squeue};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use support::{Counter, count, trace};

/// --sqpoll: the kernel thread sleeps after this many milliseconds without a submission.
const SQ_IDLE_MS: u32 = 10;
/// --sqpoll: the loop watches the completion ring before it sleeps in the kernel, and tunes
/// the watch to sleep about once per this many completions (an echo round trip makes two).
/// A fixed watch cannot serve both a busy server and a lockstep client on two shared cores:
/// 200 µs made 0.005 calls per round trip under load but spun 4.4 µs of CPU per round trip
/// (the plain ring: 3.8 µs), taking the core the clients need; 5 µs spun 1.5 µs but made 0.1
/// calls under load and 0.5-0.9 for lockstep clients.
const COMPLETIONS_PER_SLEEP: i64 = 32;
/// The watch's bounds. A silence longer than the longest watch is not traffic that a watch
/// could catch: it is not counted against the allowance of sleeps, and it shortens the watch.
const WATCH_MIN: Duration = Duration::from_micros(2);
const WATCH_MAX: Duration = Duration::from_millis(1);

/// Operations handed to the kernel, completions it returned, the system calls that took, and
/// the times the SQ thread had to be woken.
static SUBMISSIONS: Counter = Counter::new();
static COMPLETIONS: Counter = Counter::new();
static ENTERS: Counter = Counter::new();
static WAKEUPS: Counter = Counter::new();

pub struct Ring<Op> {
    ring: IoUring,
    sqpoll: bool,
    /// Operations in flight, indexed by `user_data`; `free` lists the empty slots. A slot
    /// emptied by this batch of completions waits in `retired` until the next: until its
    /// completion is handled, the caller may still name it in a cancel, and must not cancel
    /// another operation by mistake.
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    retired: Vec<usize>,
    /// Completions taken off the ring and not yet handled.
    completions: Vec<cqueue::Entry>,
    /// --sqpoll: how long the next wait watches the completion ring, and the sleeps still
    /// allowed (completions since, over COMPLETIONS_PER_SLEEP, less the sleeps taken).
    watch: Duration,
    spare: i64,
}

impl<Op: Copy> Ring<Op> {
    // ANCHOR: new
    /// Creates the rings, or explains in one line why this kernel will not give us them. The
    /// completion ring is 8 times the submission ring: more than one entry per connection at
    /// 10,000 clients. Should it fill, the kernel keeps the rest (IORING_FEAT_NODROP).
    pub fn new(args: &crate::Args) -> anyhow::Result<Ring<Op>> {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(8 * args.ring_entries);
        if args.sqpoll {
            builder.setup_sqpoll(SQ_IDLE_MS);
        }
        let ring = match (
            args.simulate_no_uring,
            args.simulate_no_sqpoll && args.sqpoll,
        ) {
            (true, _) => Err(io::Error::from_raw_os_error(libc::ENOSYS)),
            (_, true) => Err(io::Error::from_raw_os_error(libc::EPERM)),
            _ => builder.build(args.ring_entries),
        };
        let err = match ring {
            Ok(ring) => {
                let (ops, free, retired, completions) = (vec![], vec![], vec![], vec![]);
                let sqpoll = args.sqpoll;
                return Ok(Ring {
                    ring,
                    sqpoll,
                    ops,
                    free,
                    retired,
                    completions,
                    watch: WATCH_MIN,
                    spare: 0,
                });
            }
            Err(err) => err,
        };
        let why = match err.raw_os_error() {
            Some(libc::EPERM) if args.sqpoll => anyhow::bail!(
                "cannot use io_uring with --sqpoll: {err} (this kernel or a sandbox refuses \
                 the polling thread); run without --sqpoll"
            ),
            Some(libc::ENOSYS) => "this kernel has no io_uring, or a seccomp filter hides it",
            Some(libc::EPERM) => {
                "switched off in /proc/sys/kernel/io_uring_disabled, or blocked by seccomp"
            }
            _ => "io_uring set-up failed",
        };
        anyhow::bail!("cannot use io_uring: {err} ({why}); run with --backend posix")
    }
    // ANCHOR_END: new

    pub fn uring(&self) -> &IoUring {
        &self.ring
    }

    // ANCHOR: submit
    /// Queues one operation and returns its key. The entry may point into memory, or name a
    /// descriptor: the caller keeps both alive until the operation's final completion.
    pub fn submit(&mut self, op: Op, entry: squeue::Entry) -> u64 {
        let key = self.free.pop().unwrap_or_else(|| {
            self.ops.push(None);
            self.ops.len() - 1
        });
        self.ops[key] = Some(op);
        SUBMISSIONS.add(1);
        let entry = entry.user_data(key as u64);
        // SAFETY: see above.
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            // The submission ring is full: hand what it holds to the kernel to make room, and
            // take the completions out (that ring may be full too).
            match self.enter(0) {
                // EINTR, EBUSY, or EAGAIN (no memory for the requests just now): try again.
                Err(e) if e.raw_os_error() != Some(libc::EBUSY) && !support::interrupted(&e) => {
                    // Only a broken ring gets here; the server's `Drop` keeps the buffers.
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "io_uring_enter: {e}");
                }
                _ => {}
            }
            self.reap();
        }
        key as u64
    }
    // ANCHOR_END: submit

    /// Queues `cancel`, an AsyncCancel of the operation `key`: still `target`, or just ended
    /// (its final completion is in this batch, and its key is not yet used again).
    pub fn cancel(&mut self, key: u64, target: Op, cancel: Op)
    where
        Op: PartialEq,
    {
        let op = self.ops.get(key as usize).copied().flatten();
        debug_assert!(
            op.is_none_or(|op| op == target),
            "key {key} names another operation"
        );
        self.submit(cancel, opcode::AsyncCancel::new(key).build());
    }

    // ANCHOR: wait
    /// Hands over what is queued and, unless completions are already waiting, sleeps until at
    /// least one arrives (with --sqpoll, watches first).
    pub fn wait(&mut self) -> io::Result<()> {
        match (self.completions.is_empty(), self.sqpoll) {
            (false, _) => not_busy(self.enter(0))?,
            (true, false) => not_busy(self.enter(1))?,
            (true, true) => self.watch_then_sleep()?,
        }
        self.reap();
        Ok(())
    }

    /// --sqpoll: watch the completion ring before sleeping: under load something arrives, and
    /// no system call is made at all. A sleep whose completion came within WATCH_MAX of the
    /// watch's start (a longer watch would have caught it) spends COMPLETIONS_PER_SLEEP from
    /// `spare`; while that is overspent, each such sleep makes the watch half as long again.
    /// While it is not, each fruitful watch shortens it by 1/16. A longer silence, which no
    /// watch would have covered, halves it: watching was wasted.
    fn watch_then_sleep(&mut self) -> io::Result<()> {
        not_busy(self.enter(0))?; // free, unless the SQ thread sleeps and must be woken
        let start = Instant::now();
        while self.ring.completion().is_empty() && start.elapsed() < self.watch {
            std::hint::spin_loop();
        }
        let overspent = self.spare < 0;
        if !self.ring.completion().is_empty() {
            if !overspent {
                self.watch = (self.watch - self.watch / 16).max(WATCH_MIN);
            }
            return Ok(());
        }
        not_busy(self.enter(1))?;
        if start.elapsed() >= WATCH_MAX {
            self.watch = (self.watch / 2).max(WATCH_MIN);
        } else {
            self.spare = (self.spare - COMPLETIONS_PER_SLEEP).max(-8 * COMPLETIONS_PER_SLEEP);
            if self.spare < 0 {
                self.watch = (self.watch * 3 / 2).min(WATCH_MAX);
            }
        }
        Ok(())
    }
    // ANCHOR_END: wait

    fn reap(&mut self) {
        let before = self.completions.len();
        self.completions.extend(self.ring.completion());
        let taken = self.completions.len() - before;
        COMPLETIONS.add(taken as u64);
        // The allowance is short-lived, both ways: a busy minute neither pays for a next one
        // without watching, nor leaves a debt that keeps the watch long.
        self.spare = (self.spare + taken as i64).min(8 * COMPLETIONS_PER_SLEEP);
    }

    /// The completions taken so far, each with its operation, its result and its flags. A
    /// multishot operation (flag MORE) stays in the table; any other leaves it now.
    pub fn completions(&mut self) -> Vec<(Op, i32, u32)> {
        self.free.append(&mut self.retired); // the last batch has been handled
        let mut done = Vec::with_capacity(self.completions.len());
        for cqe in std::mem::take(&mut self.completions) {
            let (key, flags) = (cqe.user_data() as usize, cqe.flags());
            let op = match cqueue::more(flags) {
                true => self.ops.get(key).copied().flatten(),
                false => self.ops.get_mut(key).and_then(Option::take),
            };
            if let Some(op) = op {
                self.retired.extend((!cqueue::more(flags)).then_some(key));
                done.push((op, cqe.result(), flags));
            }
        }
        done
    }

    pub fn in_flight(&self) -> usize {
        self.ops.len() - self.free.len() - self.retired.len()
    }

    // ANCHOR: enter
    /// io_uring_enter, when there is a reason to make it: to sleep until a completion (`want`),
    /// or to hand over queued submissions. With --sqpoll the kernel thread takes those by
    /// itself, unless it has slept for lack of work (IORING_SQ_NEED_WAKEUP): then we wake it.
    fn enter(&mut self, want: usize) -> io::Result<()> {
        let sq = self.ring.submission();
        let wake = self.sqpoll && !sq.is_empty() && sq.need_wakeup();
        let nothing_to_hand = sq.is_empty() || self.sqpoll && !wake;
        if want == 0 && nothing_to_hand && !sq.cq_overflow() {
            return Ok(()); // no system call (the io-uring crate decides the same)
        }
        drop(sq);
        if wake {
            WAKEUPS.add(1);
            trace!("the SQ thread was asleep: waking it");
        }
        ENTERS.add(1);
        self.ring.submit_and_wait(want).map(drop)
    }
    // ANCHOR_END: enter

    /// The counters for the summary, and the one line that says what they mean.
    pub fn summary(&self, mut extra: Vec<String>) {
        let (ops, calls) = (SUBMISSIONS.get(), ENTERS.get());
        let mut items = vec![
            count(ops, "submission", "submissions"),
            count(COMPLETIONS.get(), "completion", "completions"),
            count(calls, "io_uring_enter call", "io_uring_enter calls"),
        ];
        items.append(&mut extra);
        if self.sqpoll {
            let wakeups = WAKEUPS.get();
            items.push(count(wakeups, "SQ thread wake-up", "SQ thread wake-ups"));
        }
        support::summary(&items);
        let per_call = ops as f64 / calls.max(1) as f64;
        support::say!("{ops} operations in {calls} system calls: {per_call:.1} per io_uring_enter");
    }
}

/// EBUSY from io_uring_enter means only that the completion ring is full and the kernel holds
/// more: not an error, but a reason to take completions off first.
fn not_busy(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        other => other,
    }
}

/// SIGINT and SIGTERM as a descriptor. Both are blocked, so never delivered: they stay pending
/// and make the signalfd readable, and a poll on the ring turns that into a completion. (The
/// pselect way, a mask that unblocks them during the wait, is not enough here: the kernel
/// applies it only if io_uring_enter sleeps, and under load there is always a completion
/// ready, so Ctrl-C would wait for the load to stop.)
pub fn stop_signal_fd() -> anyhow::Result<SignalFd> {
    let set = support::stop_signals();
    set.thread_block().context("pthread_sigmask")?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("signalfd")
}

/// The descriptor a completed accept returned, now ours, or its error.
pub fn accepted(result: i32) -> io::Result<OwnedFd> {
    if result < 0 {
        return Err(io::Error::from_raw_os_error(-result));
    }
    // SAFETY: a successful accept returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(result) })
}

/// A single accept, for the out-of-descriptors remedy. The peer's address is not asked for:
/// multishot cannot report it, so neither path does.
pub fn accept_once(listener: Fd) -> squeue::Entry {
    let (addr, len) = (std::ptr::null_mut(), std::ptr::null_mut());
    opcode::Accept::new(listener, addr, len)
        .flags(libc::SOCK_CLOEXEC)
        .build()
}
