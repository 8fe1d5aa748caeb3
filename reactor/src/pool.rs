//! The handler, and the worker pool that can run it off the loop (`--workers N`).
//!
//! The handler is the application: every line costs `--work-us` µs of CPU, then is upper-cased.
//! With no workers the loop calls it itself, and every other client waits. With workers, the loop
//! hands a connection's complete lines to a `threadpool` as one batch; a worker runs the handler,
//! sends the batch back down the loop's `crossbeam-channel`, and writes 1 to the loop's eventfd.
//! The eventfd is what wakes the loop: `epoll_wait` sleeps on descriptors, not on channels.
//!
//! `Lines` is one connection's side of it: the bytes read and not yet handled, and whether a batch
//! of them is out. `Pool::next_batch` cuts the next batch, and decides when a connection waits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use nix::sys::eventfd::EventFd;
use support::Counter;

use crate::MAX_PENDING;

/// Lines the handler ran on, on a loop's thread and on a worker's.
pub static LINES_IN_LOOP: Counter = Counter::new();
pub static LINES_IN_WORKERS: Counter = Counter::new();

/// Batches one loop may have at the pool (queued or being worked on), per worker. Enough to keep
/// every worker busy; past it the loop stops reading the clients whose lines would wait.
const QUEUE_PER_WORKER: usize = 4;

// ANCHOR: handler
/// The application: for every line (up to and including its `\n`; a last piece without one
/// counts as a line), `cost` of CPU, then the echo transform. Returns the number of lines.
pub fn handle(batch: &mut [u8], cost: Duration) -> u64 {
    let mut lines = 0;
    for line in batch.split_inclusive_mut(|&b| b == b'\n') {
        support::spin(cost);
        support::transform(line);
        lines += 1;
    }
    lines
}
// ANCHOR_END: handler

// ANCHOR: lines
/// One connection's lines on their way through the handler. One batch at a time per connection:
/// two batches of one connection on two workers could finish in either order, and so could their
/// replies. So lines that arrive while a batch is out wait in `input` for it to come back.
#[derive(Default)]
pub struct Lines {
    /// Bytes read and not yet handled: a line still without its `\n`, and lines that wait for
    /// the batch at the pool to come back (at most ~MAX_PENDING).
    input: Vec<u8>,
    /// A batch of its lines is at the pool. The next batch waits for it: replies stay in order.
    busy: bool,
    /// Its next batch waits for room at the pool: read no more from it meanwhile.
    queued: bool,
}

impl Lines {
    /// Bytes just read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }
    /// Whether the loop may read more: not while the input is at its bound (a batch at the pool
    /// holds it up), nor while the connection waits for room at the pool (back-pressure).
    pub fn may_read(&self) -> bool {
        self.input.len() < MAX_PENDING && !self.queued
    }
    /// Every line handled: nothing read is left, and no batch is out.
    pub fn all_handled(&self) -> bool {
        self.input.is_empty() && !self.busy
    }
    /// Its turn has come (see [`Pool::next_turn`]): no batch of it is out or waits any more.
    pub fn turn_came(&mut self) {
        self.busy = false;
        self.queued = false;
    }
}
// ANCHOR_END: lines

/// A connection whose turn has come: its batch is back from a worker, with the reply, or there
/// is room at the pool for the batch it waited to hand over (no reply).
pub struct Turn {
    pub key: u64,
    pub reply: Vec<u8>,
}

/// One loop's way to the workers and back. The workers are shared by every loop; the result
/// channel and the eventfd are this loop's own, so each reply comes back to the loop that owns
/// its connection.
pub struct Pool {
    /// None: --workers 0, the handler runs in the loop.
    workers: Option<threadpool::ThreadPool>,
    cost: Duration,
    results: Receiver<Turn>,
    sender: Sender<Turn>,
    /// In this loop's epoll set: a worker adds 1 after each result, the loop reads it back to 0.
    waker: Arc<EventFd>,
    /// Batches at the pool: queued or being worked on; at most `limit`.
    in_flight: usize,
    limit: usize,
    /// Connections with a batch ready while the pool was full, first come first served. Each is
    /// here at most once, and is not read from meanwhile: the back-pressure of a full queue.
    waiting: VecDeque<u64>,
    /// Batches back from the workers, taken in by `collect`, for `next_turn` to hand out.
    back: VecDeque<Turn>,
}

impl Pool {
    pub fn new(
        workers: Option<&threadpool::ThreadPool>,
        cost: Duration,
        waker: Arc<EventFd>,
    ) -> Pool {
        let limit = QUEUE_PER_WORKER * workers.map_or(1, |w| w.max_count());
        // Bounded, and never full: at most `limit` batches are out, so at most `limit` results.
        let (sender, results) = crossbeam_channel::bounded(limit);
        Pool {
            workers: workers.cloned(),
            cost,
            results,
            sender,
            waker,
            in_flight: 0,
            limit,
            waiting: VecDeque::new(),
            back: VecDeque::new(),
        }
    }

    /// The handler's cost per line (`--work-us`).
    pub fn cost(&self) -> Duration {
        self.cost
    }

    /// True with --workers 0: the loop runs the handler itself.
    pub fn in_loop(&self) -> bool {
        self.workers.is_none()
    }

    // ANCHOR: next_batch
    /// The next batch of a connection's lines for the handler, if its turn has come: not while a
    /// batch of it is at the pool or it waits for room there. With workers, a batch goes only if
    /// there is room; if not, the connection waits its turn, unread (see `next_turn`).
    pub fn next_batch(&mut self, key: u64, lines: &mut Lines, eof: bool) -> Option<Vec<u8>> {
        if lines.busy || lines.queued {
            return None;
        }
        // Free lines need no line ends (the echo contract: no newline needed). Costly ones are
        // whole lines, except the last piece at EOF, or a "line" as long as the input may grow:
        // the loop stops reading there, so it would never find its `\n`.
        let whole = self.cost.is_zero() || eof || lines.input.len() >= MAX_PENDING;
        let end = match lines.input.iter().rposition(|&b| b == b'\n') {
            _ if whole => lines.input.len(),
            Some(last) => last + 1,
            None => 0,
        };
        if end == 0 {
            return None;
        }
        if self.workers.is_some() {
            // The queue to the pool is bounded: when it is full, this connection waits its turn.
            if self.in_flight >= self.limit {
                self.waiting.push_back(key);
                lines.queued = true;
                return None;
            }
            lines.busy = true;
        }
        Some(lines.input.drain(..end).collect())
    }
    // ANCHOR_END: next_batch

    // ANCHOR: turns
    /// Hands a batch from `next_batch` to a worker; the reply comes back through `collect`.
    pub fn submit(&mut self, key: u64, mut batch: Vec<u8>) {
        let Some(workers) = &self.workers else {
            unreachable!("submit with no workers");
        };
        self.in_flight += 1;
        let (sender, waker, cost) = (self.sender.clone(), Arc::clone(&self.waker), self.cost);
        workers.execute(move || {
            LINES_IN_WORKERS.add(handle(&mut batch, cost));
            // Send, then wake: the loop reads the eventfd before it empties the channel, so a
            // result sent after it looked is announced by a wake-up it has not read yet.
            let _ = sender.send(Turn { key, reply: batch });
            let _ = waker.write(1);
        });
    }

    /// After the eventfd said readable: read it back to 0, then take in every finished batch.
    pub fn collect(&mut self) {
        let _ = self.waker.read();
        let before = self.back.len();
        self.back.extend(self.results.try_iter());
        self.in_flight -= self.back.len() - before;
    }

    /// The next connection whose turn has come: first each one whose batch is back, with its
    /// reply; then, while there is room at the pool (the replies' own next batches took theirs
    /// first), the ones that waited for room, first come, first served.
    pub fn next_turn(&mut self) -> Option<Turn> {
        if let Some(turn) = self.back.pop_front() {
            return Some(turn);
        }
        if self.in_flight >= self.limit {
            return None;
        }
        let key = self.waiting.pop_front()?;
        let reply = Vec::new();
        Some(Turn { key, reply })
    }
    // ANCHOR_END: turns
}
