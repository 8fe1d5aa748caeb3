//! `bench readiness`: what one readiness call costs as the number of watched descriptors grows.
//!
//! The method of Kerrisk's table 63-9 (*The Linux Programming Interface*, 63.4.5): watch N
//! descriptors, make one chosen at random ready, ask select / poll / epoll_wait which one it is,
//! consume the readiness, and repeat; report the CPU time of 100,000 such monitoring operations.
//! select and poll hand the kernel the whole list on every call, and the kernel checks every
//! descriptor in it, so their cost grows with N. epoll keeps the interest list in the kernel and
//! returns only the ready list, so its cost stays flat. That is the lecture's claim, as numbers.
//!
//! The descriptors are eventfds, not pipes: an eventfd is one descriptor, a pipe two, and N =
//! 10,000 pipes would need 20,000 descriptors, at or past this machine's limit (`ulimit -n` is
//! 20,000, and the process already holds a few). Readiness of an eventfd is checked the same way
//! as a pipe's or a socket's (the kernel calls the file's `poll` method for each watched
//! descriptor), so the growth with N is the same; only the constant per descriptor differs.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use anyhow::{Context, bail};
use conformance::Rng;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::table::{json_number, markdown, sig3, thousands};

/// The watched-descriptor counts of Kerrisk's table.
pub const SIZES: [usize; 4] = [10, 100, 1000, 10_000];

/// Monitoring operations per cell by default (fewer for select and poll at large N).
pub const DEFAULT_OPS: u64 = 100_000;

/// Kerrisk's table 63-9: CPU seconds for 100,000 monitoring operations, Linux 2.6.25,
/// as (N, select, poll, epoll).
pub const KERRISK: [(usize, f64, f64, f64); 4] = [
    (10, 0.73, 0.61, 0.41),
    (100, 3.0, 2.9, 0.42),
    (1000, 35.0, 35.0, 0.53),
    (10_000, 930.0, 990.0, 0.66),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    Select,
    Poll,
    Epoll,
}

impl Model {
    pub const ALL: [Model; 3] = [Model::Select, Model::Poll, Model::Epoll];
    pub fn name(self) -> &'static str {
        match self {
            Model::Select => "select",
            Model::Poll => "poll",
            Model::Epoll => "epoll",
        }
    }
}

/// One N: seconds of CPU per 100,000 operations for each model, and how many were run.
#[derive(Clone, Debug)]
pub struct Row {
    pub n: usize,
    pub secs: [f64; 3],
    pub ops: [u64; 3],
}

/// How many operations to run: all of `ops` for epoll (cheap at any N), and for select and poll
/// `ops × 100 / N` past N = 100 (at least 10), so that N = 10,000 finishes in a fraction of a
/// second instead of minutes. The result is scaled to 100,000 operations either way.
pub fn ops_for(model: Model, n: usize, ops: u64) -> u64 {
    match model {
        Model::Epoll => ops,
        Model::Select | Model::Poll => (ops * 100 / n.max(100) as u64).max(10).min(ops),
    }
}

pub fn main(json: bool, ops: u64) -> anyhow::Result<()> {
    if ops == 0 {
        bail!("--ops must be at least 1");
    }
    if cfg!(debug_assertions) {
        eprintln!("bench: warning: this is a debug build; measure with --release");
    }
    let rows = measure_all(ops, |_| {})?;
    if json {
        println!("{}", to_json(&rows));
    } else {
        print!("{}", to_text(&rows));
    }
    Ok(())
}

/// Runs every cell of the table; `progress` hears about each N before it is measured.
pub fn measure_all(ops: u64, mut progress: impl FnMut(usize)) -> anyhow::Result<Vec<Row>> {
    let limit = conformance::raise_descriptor_limit();
    let mut rows = Vec::new();
    for n in SIZES {
        if n as u64 + 64 > limit {
            bail!(
                "N = {n} needs {n} descriptors and this process may open {limit}; raise the \
                 hard limit (ulimit -Hn)"
            );
        }
        progress(n);
        let fds = (0..n)
            .map(|_| EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("create {n} eventfds"))?;
        let mut row = Row {
            n,
            secs: [0.0; 3],
            ops: [0; 3],
        };
        for (i, model) in Model::ALL.into_iter().enumerate() {
            let k = ops_for(model, n, ops);
            let cpu = match model {
                Model::Select => run_select(&fds, k),
                Model::Poll => run_poll(&fds, k),
                Model::Epoll => run_epoll(&fds, k),
            }
            .with_context(|| format!("{} with N = {n}", model.name()))?;
            row.secs[i] = cpu * 100_000.0 / k as f64;
            row.ops[i] = k;
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Makes descriptor `i` readable: add 1 to its eventfd counter.
fn make_ready(fd: &EventFd) -> anyhow::Result<()> {
    fd.write(1).context("write eventfd")?;
    Ok(())
}

/// Consumes the readiness: reading an eventfd resets its counter to 0.
fn consume(fd: &EventFd) -> anyhow::Result<()> {
    fd.read().context("read eventfd")?;
    Ok(())
}

fn check(found: Option<usize>, want: usize) -> anyhow::Result<()> {
    match found {
        Some(i) if i == want => Ok(()),
        other => bail!("descriptor #{want} was made ready, the call reported {other:?}"),
    }
}

/// The CPU seconds this process spends in `f`.
fn cpu_time(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let before = crate::own_cpu_seconds();
    f()?;
    Ok(crate::own_cpu_seconds() - before)
}

// ANCHOR: big_fd_set
/// A descriptor set of any size, for select(2) past FD_SETSIZE.
///
/// glibc's `fd_set`, and nix's `FdSet` that wraps it, is a fixed array of 1024 bits: setting
/// descriptor 1024 or above writes past its end. That limit lives only in user space. The kernel
/// takes any `nfds` (up to the process's descriptor limit) and reads `nfds` bits from each
/// pointer, in the same layout: bit `fd % B` of the `fd / B`-th `unsigned long`, B its width in
/// bits. So a heap array of `unsigned long` big enough for `nfds` bits, cast to `*mut fd_set`,
/// is a valid argument for any `nfds`. (This is how some programs lift select's ceiling; poll
/// and epoll were the designed way out.)
struct BigFdSet {
    words: Vec<libc::c_ulong>,
}

impl BigFdSet {
    const BITS: usize = libc::c_ulong::BITS as usize;

    /// An empty set with room for descriptors `0..nfds`.
    fn new(nfds: usize) -> BigFdSet {
        BigFdSet {
            words: vec![0; nfds.div_ceil(Self::BITS)],
        }
    }
    fn insert(&mut self, fd: RawFd) {
        let fd = fd as usize;
        self.words[fd / Self::BITS] |= 1 << (fd % Self::BITS);
    }
    fn contains(&self, fd: RawFd) -> bool {
        let fd = fd as usize;
        self.words[fd / Self::BITS] & (1 << (fd % Self::BITS)) != 0
    }
    fn as_mut_ptr(&mut self) -> *mut libc::fd_set {
        self.words.as_mut_ptr().cast()
    }
}
// ANCHOR_END: big_fd_set

/// select: the set is copied in and scanned by the kernel on every call, then scanned again by
/// us (select overwrites it with its answer, so it is rebuilt from a template each time).
fn run_select(fds: &[EventFd], ops: u64) -> anyhow::Result<f64> {
    let nfds = fds.iter().map(|f| f.as_raw_fd()).max().unwrap_or(0) as usize + 1;
    let mut template = BigFdSet::new(nfds);
    for fd in fds {
        template.insert(fd.as_raw_fd());
    }
    let mut readfds = BigFdSet::new(nfds);
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    cpu_time(|| {
        for _ in 0..ops {
            let want = rng.below(fds.len());
            make_ready(&fds[want])?;
            readfds.words.copy_from_slice(&template.words);
            // SAFETY: `readfds` holds at least `nfds` bits (see BigFdSet); the other sets and
            // the timeout are null, which select allows.
            let n = unsafe {
                libc::select(
                    nfds as libc::c_int,
                    readfds.as_mut_ptr(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error()).context("select");
            }
            // Like a select server: ask the answer about every descriptor we watch.
            let found = fds.iter().position(|f| readfds.contains(f.as_raw_fd()));
            check(found, want)?;
            consume(&fds[want])?;
        }
        Ok(())
    })
}

/// poll: the pollfd array is copied in and every entry checked on each call; afterwards we
/// look at every entry's `revents`.
fn run_poll(fds: &[EventFd], ops: u64) -> anyhow::Result<f64> {
    let mut pollfds: Vec<PollFd> = fds
        .iter()
        .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
        .collect();
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    cpu_time(|| {
        for _ in 0..ops {
            let want = rng.below(fds.len());
            make_ready(&fds[want])?;
            nix::poll::poll(&mut pollfds, PollTimeout::NONE).context("poll")?;
            let found = pollfds
                .iter()
                .position(|p| p.revents().is_some_and(|r| !r.is_empty()));
            check(found, want)?;
            consume(&fds[want])?;
        }
        Ok(())
    })
}

/// epoll: the interest list was registered once (outside the timing); each call returns only
/// the ready descriptor, with the index we stored as its data.
fn run_epoll(fds: &[EventFd], ops: u64) -> anyhow::Result<f64> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
    for (i, fd) in fds.iter().enumerate() {
        epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .context("epoll_ctl ADD")?;
    }
    let mut events = [EpollEvent::empty(); 64];
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    cpu_time(|| {
        for _ in 0..ops {
            let want = rng.below(fds.len());
            make_ready(&fds[want])?;
            let n = epoll
                .wait(&mut events, PollTimeout::NONE)
                .context("epoll_wait")?;
            let found = events[..n].first().map(|e| e.data() as usize);
            check(found, want)?;
            consume(&fds[want])?;
        }
        Ok(())
    })
}

/// `{"rows": [{"n": 10, "select": s, "poll": s, "epoll": s, "ops": {...}}, ...], ...}`
pub fn to_json(rows: &[Row]) -> String {
    let rows: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"n\": {}, \"select\": {}, \"poll\": {}, \"epoll\": {}, \
                 \"ops\": {{\"select\": {}, \"poll\": {}, \"epoll\": {}}}}}",
                r.n,
                json_number(r.secs[0]),
                json_number(r.secs[1]),
                json_number(r.secs[2]),
                r.ops[0],
                r.ops[1],
                r.ops[2]
            )
        })
        .collect();
    format!(
        "{{\"unit\": \"CPU seconds per 100000 monitoring operations\", \"rows\": [{}]}}",
        rows.join(", ")
    )
}

/// The rows of the markdown table: this machine beside Kerrisk's.
pub fn table_rows(rows: &[Row]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            let k = KERRISK.iter().find(|k| k.0 == r.n);
            let theirs = |f: fn(&(usize, f64, f64, f64)) -> f64| k.map(f).map(sig3);
            vec![
                thousands(r.n as u64),
                sig3(r.secs[0]),
                sig3(r.secs[1]),
                sig3(r.secs[2]),
                theirs(|k| k.1).unwrap_or_default(),
                theirs(|k| k.2).unwrap_or_default(),
                theirs(|k| k.3).unwrap_or_default(),
            ]
        })
        .collect()
}

pub const TABLE_HEADERS: [&str; 7] = [
    "N watched",
    "select",
    "poll",
    "epoll",
    "select (Kerrisk)",
    "poll (Kerrisk)",
    "epoll (Kerrisk)",
];

pub fn to_text(rows: &[Row]) -> String {
    let mut out = String::from(
        "CPU seconds per 100,000 monitoring operations: N descriptors watched, one random one \
         ready each time.\nThis machine on the left; Kerrisk's TLPI table 63-9 (Linux 2.6.25) on \
         the right.\n\n",
    );
    out += &markdown(&TABLE_HEADERS, &table_rows(rows));
    out += "\nOperations run (scaled to 100,000):";
    for r in rows {
        out += &format!(
            " N={}: {}/{}/{};",
            r.n,
            thousands(r.ops[0]),
            thousands(r.ops[1]),
            thousands(r.ops[2])
        );
    }
    out.pop();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_fd_set_matches_the_kernel_layout() {
        let mut set = BigFdSet::new(10_001);
        assert_eq!(set.words.len(), 10_001usize.div_ceil(BigFdSet::BITS));
        for fd in [0, 63, 64, 1023, 1024, 10_000] {
            assert!(!set.contains(fd));
            set.insert(fd);
            assert!(set.contains(fd));
        }
        assert!(!set.contains(1025));
        // Below FD_SETSIZE the layout is the one libc's FD_ISSET reads.
        // SAFETY: the set holds 10,001 bits, more than an fd_set's 1024.
        let libc_sees = |fd| unsafe { libc::FD_ISSET(fd, set.words.as_ptr().cast()) };
        assert!(libc_sees(63) && libc_sees(64) && libc_sees(1023) && !libc_sees(62));
    }

    #[test]
    fn large_n_runs_fewer_operations() {
        assert_eq!(ops_for(Model::Select, 10, 100_000), 100_000);
        assert_eq!(ops_for(Model::Poll, 100, 100_000), 100_000);
        assert_eq!(ops_for(Model::Poll, 10_000, 100_000), 1_000);
        assert_eq!(ops_for(Model::Select, 10_000, 1_000), 10);
        assert_eq!(ops_for(Model::Epoll, 10_000, 100_000), 100_000);
        assert_eq!(ops_for(Model::Select, 10, 5), 5);
    }

    #[test]
    fn every_model_finds_the_ready_descriptor() {
        let fds: Vec<EventFd> = (0..50)
            .map(|_| EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap())
            .collect();
        for cpu in [
            run_select(&fds, 200),
            run_poll(&fds, 200),
            run_epoll(&fds, 200),
        ] {
            assert!(cpu.unwrap() >= 0.0);
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let rows = [Row {
            n: 10,
            secs: [0.5, 0.25, 0.125],
            ops: [100, 100, 100],
        }];
        let json = to_json(&rows);
        assert!(
            json.contains(r#""rows": [{"n": 10, "select": 0.5, "poll": 0.25, "epoll": 0.125"#),
            "{json}"
        );
    }
}
