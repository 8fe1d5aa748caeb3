//! The harness shared by the tests, the checker and `bench`: a server process started and
//! stopped from outside, what the kernel says about it in `/proc`, and small helpers (the
//! descriptor limit, a replayable random generator, JSON strings).
//!
//! Nothing here panics: the tests' panicking helpers in the crate root, the checker and the
//! bench each turn an `Err` into their own kind of failure.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

// ---------------------------------------------------------------------------------------------
// A running server.

/// A server process, killed if dropped while still running.
pub struct Server {
    child: Child,
    /// It leads a process group of its own (a typed command line): what it forks is stopped
    /// with it.
    group: bool,
    /// Where it listens: the address it announced, or the one it was told to use.
    pub addr: SocketAddr,
    stderr: Collected,
}

/// How a server ended.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub stderr: String,
    /// It did not exit within the grace period and was killed with SIGKILL.
    pub killed: bool,
    /// From the signal to the exit.
    pub took: Duration,
}

impl Server {
    /// Starts `cmd` and waits up to `patience` until it is ready: until a `listening on IP:PORT`
    /// line on its stdout (which must then be its first line), or, when `probe` is given, until
    /// that address accepts a connection or any line announces an address. Servers in any
    /// language buffer their stdout into a pipe, which is why probing exists.
    pub fn launch(
        mut cmd: Command,
        probe: Option<SocketAddr>,
        patience: Duration,
    ) -> Result<Server, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let pid = Pid::from_raw(child.id() as i32);
        let group = nix::unistd::getpgid(Some(pid)) == Ok(pid);
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Every line goes to the channel, and the pipe is drained to the end, so that a chatty
        // server never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            group,
            addr: probe.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            stderr,
        };
        let deadline = Instant::now() + patience;
        let step = Duration::from_millis(if probe.is_some() { 20 } else { 100 });
        let failure = loop {
            match rx.recv_timeout(step) {
                Ok(Ok(line)) => match (parse_announcement(&line), probe) {
                    (Some(addr), _) => {
                        server.addr = addr;
                        return Ok(server);
                    }
                    (None, None) => {
                        break format!("no `listening on IP:PORT` in the first line: {line:?}");
                    }
                    (None, Some(_)) => {}
                },
                Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) if probe.is_none() => {
                    break "it closed its stdout without a `listening on` line".to_owned();
                }
                // Its stdout is closed: only the probe is left, at its own pace.
                Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => thread::sleep(step),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                break format!("it exited ({status}) before listening");
            }
            if let Some(addr) = probe
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                break match probe {
                    Some(addr) => {
                        format!(
                            "nothing accepted connections on {addr} within {patience:?} (does \
                             it listen on port {}, the one its command line gives it?)",
                            addr.port()
                        )
                    }
                    None => format!("it announced nothing within {patience:?}"),
                };
            }
        };
        server.kill_all();
        let said = text_at_eof(&server.stderr, Duration::from_secs(2));
        if said.trim().is_empty() {
            return Err(format!("{cmd:?}: {failure}; it said nothing on stderr"));
        }
        Err(format!(
            "{cmd:?}: {failure}; its stderr said:\n{}",
            said.trim_end()
        ))
    }

    /// Starts a command line typed by a person: split into words as a shell would (without
    /// running a shell), `{port}` replaced by a free port of 127.0.0.1, which is then probed.
    /// The server is killed with SIGKILL if this process dies first, however it dies.
    pub fn from_command_line(line: &str, patience: Duration) -> Result<Server, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let words: Vec<String> = split_words(line)?
            .into_iter()
            .map(|w| w.replace("{port}", &port.to_string()))
            .collect();
        let Some((program, args)) = words.split_first() else {
            return Err("the command is empty".to_owned());
        };
        let mut cmd = Command::new(program);
        // A group of its own, so that the workers a server forks are stopped with it.
        cmd.args(args).process_group(0);
        let parent = nix::unistd::getpid();
        // SAFETY: between fork and exec only async-signal-safe calls are made (sigaction,
        // prctl, getppid, kill), and nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                // An ignored SIGINT is inherited across exec (a shell's background job has it),
                // and Python then never raises KeyboardInterrupt: give the server the default.
                for signal in [Signal::SIGINT, Signal::SIGTERM] {
                    nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl)?;
                }
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The parent may have died before prctl: then nobody would ever kill us.
                if nix::unistd::getppid() != parent {
                    let _ = kill(nix::unistd::getpid(), Signal::SIGKILL);
                }
                Ok(())
            });
        }
        let probe = line
            .contains("{port}")
            .then(|| SocketAddr::from(([127, 0, 0, 1], port)));
        Server::launch(cmd, probe, patience)
    }

    /// The server's process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Everything the server has written to stderr so far.
    pub fn stderr(&self) -> String {
        let text = self.stderr.0.lock().unwrap_or_else(|e| e.into_inner());
        text.trim_end_matches('\u{0}').to_owned()
    }

    /// Waits until the server's stderr contains `needle`; Err with all it said after `patience`.
    pub fn stderr_containing(&self, needle: &str, patience: Duration) -> Result<String, String> {
        let (lock, cond) = &*self.stderr;
        let deadline = Instant::now() + patience;
        let mut text = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !text.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(text.clone());
            }
            text = cond.wait_timeout(text, left).unwrap().0;
        }
        Ok(text.clone())
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended, if it has, within `patience`.
    pub fn exited_within(&mut self, patience: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            match self.child.try_wait() {
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(status) => return status,
                Err(_) => return None,
            }
        }
    }

    /// Kills it with SIGKILL and waits for it, and with it what is left of its process group.
    fn kill_all(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.group {
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
    }

    /// Sends `signal` (to its whole process group, if it leads one), waits up to `grace` for
    /// the exit, then kills it with SIGKILL; what it forked goes with it.
    pub fn stop(mut self, signal: Signal, grace: Duration) -> Stopped {
        let signalled = Instant::now();
        let _ = if self.group {
            killpg(self.pid(), signal)
        } else {
            kill(self.pid(), signal)
        };
        let deadline = signalled + grace;
        let mut killed = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    killed = true;
                    let _ = self.child.kill();
                    break self.child.wait().expect("wait for a killed child");
                }
            }
        };
        let took = signalled.elapsed();
        if self.group {
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
        Stopped {
            status,
            stderr: text_at_eof(&self.stderr, grace),
            killed,
            took,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Finds `IP:PORT` after `listening on` in a line; text may follow the address.
pub fn parse_announcement(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The text after `summary: ` in a server's stderr.
pub fn summary_line(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find_map(|l| l.split_once("summary: ").map(|(_, s)| s.trim().to_owned()))
}

/// A port of 127.0.0.1 that nobody was listening on a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Splits a command line into words as a POSIX shell would, without expanding anything:
/// blanks separate words, '…' keeps everything literally, "…" keeps all but `\"`, `\\`, `\$`
/// and `` \` ``, and a backslash outside quotes keeps the next character.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed ' in {line:?}")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => w.extend(['\\', c]),
                            None => return Err(format!("unclosed \" in {line:?}")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed \" in {line:?}")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("a lone \\ ends {line:?}")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Text read from a child's pipe so far; a NUL at the end marks EOF.
pub(crate) type Collected = Arc<(Mutex<String>, Condvar)>;

/// Reads a pipe to the end in a thread; a NUL marks the end.
pub(crate) fn collect(mut pipe: impl Read + Send + 'static) -> Collected {
    let shared = Arc::new((Mutex::new(String::new()), Condvar::new()));
    let writer = Arc::clone(&shared);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = pipe.read(&mut buf).unwrap_or(0);
            let (lock, cond) = &*writer;
            let mut text = lock.lock().unwrap_or_else(|e| e.into_inner());
            if n == 0 {
                text.push('\u{0}');
                cond.notify_all();
                return;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            cond.notify_all();
        }
    });
    shared
}

/// Waits for a pipe read by [`collect`] to reach its end (the writer has exited), and returns
/// all it said. Gives up after `patience`: a grandchild may still hold the pipe open.
pub(crate) fn text_at_eof(collected: &Collected, patience: Duration) -> String {
    let (lock, cond) = &**collected;
    let deadline = Instant::now() + patience;
    let mut text = lock.lock().unwrap_or_else(|e| e.into_inner());
    while !text.ends_with('\u{0}') && Instant::now() < deadline {
        text = cond
            .wait_timeout(text, Duration::from_millis(100))
            .unwrap()
            .0;
    }
    text.trim_end_matches('\u{0}').to_owned()
}

// ---------------------------------------------------------------------------------------------
// What the kernel says about a process.

/// CPU seconds (user + system) a server has used, from /proc: every thread of its process, and
/// every process it started, running (a pre-forked pool's workers) or ended and reaped (then
/// counted in its parent's cutime and cstime).
pub fn process_cpu_seconds(pid: Pid) -> std::io::Result<f64> {
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let mut total = parse_stat_cpu_with_children(&stat, ticks)
        .ok_or_else(|| std::io::Error::other("/proc/PID/stat"))?;
    for child in descendants(pid) {
        // A descendant that ended since the scan is in its parent's cutime by now, or soon.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
            total += parse_stat_cpu_with_children(&stat, ticks).unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// Every process below `pid` (children, their children, ...), from the parent of each in /proc.
fn descendants(pid: Pid) -> Vec<Pid> {
    let mut parents: Vec<(Pid, Pid)> = Vec::new(); // (process, its parent)
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some(ppid) = stat_fields(&stat).and_then(|f| f.get(1)?.parse().ok()) {
            parents.push((Pid::from_raw(p), Pid::from_raw(ppid)));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.split_off(1)
}

/// The fields of /proc/PID/stat after the command name, which may hold spaces and
/// parentheses: counted from its last ')'. The first is the state (field 3), then the parent.
pub fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(
        stat.get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect(),
    )
}

/// The share of one core a process uses over `window`: CPU seconds before and after a sleep
/// that is the measurement window itself, not a synchronisation.
pub fn cpu_share(pid: Pid, window: Duration) -> std::io::Result<f64> {
    let before = process_cpu_seconds(pid)?;
    let started = Instant::now();
    thread::sleep(window);
    Ok((process_cpu_seconds(pid)? - before) / started.elapsed().as_secs_f64())
}

pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64)
}

/// utime + stime from the text of /proc/PID/stat, in seconds.
pub fn parse_stat_cpu(stat: &str, ticks_per_sec: u64) -> Option<f64> {
    let fields = stat_fields(stat)?;
    // After ')' come state (field 3), ppid, ...: utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_sec as f64)
}

/// The same, plus cutime + cstime (fields 16 and 17): the children it has reaped.
pub fn parse_stat_cpu_with_children(stat: &str, ticks_per_sec: u64) -> Option<f64> {
    let fields = stat_fields(stat)?;
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(parse_stat_cpu(stat, ticks_per_sec)? + (cutime + cstime) as f64 / ticks_per_sec as f64)
}

pub fn status_field(pid: Pid, name: &str) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_field(&status, name)
        .ok_or_else(|| std::io::Error::other(format!("no {name} in /proc/{pid}/status")))
}

pub fn parse_status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Raises this process's soft descriptor limit to its hard limit, and returns the hard limit:
/// thousands of client connections need more than the usual soft limit of 1024.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    hard
}

/// A small deterministic generator (xorshift64*), so that failures can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A JSON string with the characters JSON requires escaped.
///
/// The checker and the bench write flat objects of strings and numbers, keys in the order a
/// person reads them; this and a number formatter are all that takes, and the conformance crate,
/// which every chapter's tests build, stays free of serde.
pub fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell() {
        let w = |s: &str| split_words(s).unwrap();
        assert_eq!(
            w("python3  server.py {port}"),
            ["python3", "server.py", "{port}"]
        );
        assert_eq!(
            w(r#"a 'b c' "d \"e\" \n" f\ g"#),
            ["a", "b c", "d \"e\" \\n", "f g"]
        );
        assert_eq!(w("x''y \"\""), ["xy", ""]);
        assert!(w("").is_empty());
        assert!(split_words("a 'b").is_err());
        assert!(split_words("a \"b").is_err());
    }

    #[test]
    fn announcements_parse() {
        let addr = |s: &str| s.parse::<SocketAddr>().ok();
        assert_eq!(
            parse_announcement("select listening on 127.0.0.1:40123"),
            addr("127.0.0.1:40123")
        );
        assert_eq!(
            parse_announcement("listening on 127.0.0.1:8080 (pid 4242)"),
            addr("127.0.0.1:8080")
        );
        assert_eq!(
            parse_announcement("epoll listening on [::1]:8080 (edge-triggered)"),
            addr("[::1]:8080")
        );
        assert_eq!(parse_announcement("listening on nowhere"), None);
        assert_eq!(parse_announcement("hello"), None);
    }

    #[test]
    fn proc_fields_parse() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "4242 (my (server) x) S 1 4242 4242 0 -1 4194304 120 0 0 0 250 50 0 0 20 0 1 \
                    0 1234 5678 90 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat, 100), Some(3.0));
        assert_eq!(parse_stat_cpu_with_children(stat, 100), Some(3.0));
        let reaped = stat.replace(" 250 50 0 0 ", " 250 50 30 20 ");
        assert_eq!(parse_stat_cpu_with_children(&reaped, 100), Some(3.5));
        let status = "Name:\tselect\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_status_field(status, "VmRSS"), Some(2048));
        assert_eq!(parse_status_field(status, "Threads"), Some(3));
        assert_eq!(parse_status_field(status, "VmSwap"), None);
        assert_eq!(
            summary_line("select: stopped by SIGINT\nselect: summary: 3 connections, 1 KiB in\n"),
            Some("3 connections, 1 KiB in".to_owned())
        );
    }

    #[test]
    fn json_strings_escape() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
    }
}
