//! The contract's checks as functions of an address: each talks to a server that is already
//! listening, the way a client would, and returns a [`Verdict`]: what it measured, or what went
//! wrong and the likely cause. The checker (`cargo run -p conformance`) prints them; the tests
//! in the crate root panic on a failure. One implementation serves both.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::harness::{Rng, cpu_share, raise_descriptor_limit, status_field};

/// Every check, in the order the checker runs them. The last three need the server's process.
pub const NAMES: &[&str] = &[
    "hello",
    "binary",
    "half-close",
    "resets",
    "concurrent",
    "slow-reader",
    "idle-cpu",
    "memory",
    "sigint",
];

/// Checks that need the server's process (started with `--spawn`).
pub const NEED_PROCESS: &[&str] = &["idle-cpu", "memory", "sigint"];

/// A reply slower than this, to a client beside a slow reader, means the slow reader held up
/// the others.
pub const PROMPT: Duration = Duration::from_millis(500);

/// More CPU than this share of one core while every client is silent is a busy loop: a
/// server that sleeps in the kernel measures ~0.00.
pub const IDLE_CPU_LIMIT: f64 = 0.05;

/// More RSS growth than this, while one client sends without reading, means the server buffers
/// without bound.
pub const MEMORY_LIMIT_KIB: u64 = 32 * 1024;

/// What a check found: `Ok(figure)` when the server passed, with what was measured.
pub type Verdict = Result<String, Failure>;

/// Why a check failed: what was seen, and a one-line hint naming the likely cause and the book
/// section that explains it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub detail: String,
    pub hint: String,
}

fn fail(detail: impl Into<String>, hint: &str) -> Failure {
    Failure {
        detail: detail.into(),
        hint: hint.to_owned(),
    }
}

// The hints. Each names a cause and the section of the book's chapter "Check your own server"
// (docs/src/checker.md) that shows the mistake and its fix.
pub const HINT_UPPER: &str = "the reply is not upper-cased: a plain echo server? then add --plain \
     (book: Check your own server, § hello)";
pub const HINT_PLAIN: &str = "the reply is upper-cased: this server keeps the contract, drop \
     --plain (book: Check your own server, § hello)";
pub const HINT_NO_REPLY: &str = "no reply: the server does not read this connection, or blocks \
     somewhere else (book: Check your own server, § hello)";
pub const HINT_CHANGED: &str = "bytes above 127 changed: upper-case ASCII a-z only, on bytes \
     (Python's bytes.upper()), never decoded text (book: Check your own server, § binary)";
pub const HINT_GARBLED: &str = "bytes came back changed or out of order: one output buffer per \
     client, appended in order (book: Check your own server, § binary)";
pub const HINT_LOST: &str = "bytes lost: send's count ignored, or a close with output still \
     owed; keep what send did not take (book: Check your own server, § binary)";
pub const HINT_EOF: &str = "end-of-file dropped what was owed: on recv() == b'' stop reading, \
     send everything still buffered, then close (book: Check your own server, § half-close)";
pub const HINT_NO_EOF: &str = "no end-of-file after the client's: close once the client has \
     sent EOF and everything owed is sent (book: Check your own server, § half-close)";
pub const HINT_RESETS: &str = "clients that reset stopped the server: catch ConnectionError \
     (reset, broken pipe) on recv and send, and close that client only (book: Check your own \
     server, § resets)";
pub const HINT_DIED: &str = "the server died: its last words say where; trouble with one client \
     must close that client only, never end the server (book: Check your own server, § resets)";
pub const HINT_CONCURRENT: &str = "clients connected at once are not all served: one client at \
     a time, or a call that blocks the loop (book: Check your own server, § concurrent)";
pub const HINT_BLOCKING_SEND: &str = "a blocking send stalls everyone: non-blocking sockets, \
     an output buffer per client, write interest while it is non-empty (book: Check your own \
     server, § slow-reader)";
pub const HINT_COUNT_IGNORED: &str = "send's count ignored: bytes lost; send takes what fits and \
     says how much, keep the rest in the client's output buffer (book: Check your own server, \
     § slow-reader)";
pub const HINT_BOTH: &str = "a slow reader stalls everyone AND bytes were lost: a blocking send \
     and an ignored count (book: Check your own server, § slow-reader)";
pub const HINT_TOO_SLOW: &str = "slow, not wrong: every byte the server took came back, but it \
     took too few in time; read in large chunks (recv(65536)), not a few bytes per wake-up, or \
     check with less data (--slow-mib) (book: Check your own server, § slow-reader)";
pub const HINT_SLOW_CLOSED: &str = "the server cut off a client that was slow to read: pause \
     reading it instead (back-pressure) (book: Check your own server, § slow-reader)";
pub const HINT_BUSY: &str = "a busy loop: wait in select/poll/epoll without a timeout instead \
     of polling (book: Non-blocking I/O; Check your own server, § idle-cpu)";
pub const HINT_MEMORY: &str = "no back-pressure: stop reading a client whose output buffer is \
     full (book: Check your own server, § memory)";
pub const HINT_DESCRIPTORS: &str = "this checker may not open that many sockets: raise `ulimit \
     -n` or lower --clients";

/// The server to check.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// A plain echo server: replies are the bytes sent, not upper-cased.
    pub plain: bool,
    /// The longest any one wait may take before the check gives up.
    pub patience: Duration,
    /// The slowest reply the slow-reader check accepts for a client beside the slow one.
    pub prompt: Duration,
}

impl Target {
    pub fn new(addr: SocketAddr) -> Target {
        Target {
            addr,
            plain: false,
            patience: crate::PATIENCE,
            prompt: PROMPT,
        }
    }

    /// What the server must send back for `data`.
    pub fn expect(&self, data: &[u8]) -> Vec<u8> {
        if self.plain {
            data.to_vec()
        } else {
            data.to_ascii_uppercase()
        }
    }

    /// A new client connection with read and write deadlines set.
    pub fn connect(&self) -> Result<TcpStream, String> {
        let stream = TcpStream::connect_timeout(&self.addr, self.patience)
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        stream
            .set_read_timeout(Some(self.patience))
            .and_then(|()| stream.set_write_timeout(Some(self.patience)))
            .map_err(|e| format!("socket options: {e}"))?;
        Ok(stream)
    }
}

// ---------------------------------------------------------------------------------------------
// Client-side steps that fail with a sentence instead of a panic.

/// Reads exactly `n` bytes.
pub fn read_exactly(stream: &mut TcpStream, n: usize) -> Result<Vec<u8>, String> {
    let mut got = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match stream.read(&mut got[filled..]) {
            Ok(0) => return Err(format!("end-of-file after {filled} of {n} bytes")),
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => {
                return Err(format!("nothing after {filled} of {n} bytes (timed out)"));
            }
            Err(e) => return Err(format!("read after {filled} of {n} bytes: {e}")),
        }
    }
    Ok(got)
}

/// Sends `msg` and reads exactly as many bytes back.
pub fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Result<Vec<u8>, String> {
    stream.write_all(msg).map_err(|e| format!("write: {e}"))?;
    read_exactly(stream, msg.len())
}

/// How a read to end-of-file ended, beside the bytes it got.
#[derive(Debug, PartialEq)]
pub enum End {
    Eof,
    TimedOut,
    Error(String),
}

/// Reads until end-of-file, a timeout or an error.
pub fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, End) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, End::Eof),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => return (got, End::TimedOut),
            Err(e) => return (got, End::Error(e.to_string())),
        }
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Sets SO_LINGER to zero, so that dropping the stream sends RST instead of FIN.
pub fn reset_on_close(stream: &TcpStream) -> Result<(), String> {
    use nix::sys::socket::{setsockopt, sockopt::Linger};
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(stream, Linger, &linger).map_err(|e| format!("SO_LINGER: {e}"))
}

/// Opens `n` connections. Connecting is left to the kernel's accept queue, so it does not need
/// the server to accept each one before the next is opened.
pub fn connect_many(t: &Target, n: usize) -> Result<Vec<TcpStream>, Failure> {
    let limit = raise_descriptor_limit() as usize;
    if n + 100 >= limit {
        return Err(fail(
            format!("{n} clients need more descriptors than this process may open ({limit})"),
            HINT_DESCRIPTORS,
        ));
    }
    (0..n)
        .map(|i| {
            t.connect()
                .map_err(|e| fail(format!("client {i} of {n}: {e}"), HINT_CONCURRENT))
        })
        .collect()
}

/// Compares a reply with what was expected, and names the cause of the first difference.
fn compare(sent: &[u8], got: &[u8], want: &[u8], t: &Target) -> Result<(), Failure> {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let detail = format!(
            "{} of {} bytes back; first difference at byte {i}: sent {:#04x}, got {:#04x}, want {:#04x}",
            got.len(),
            want.len(),
            sent[i],
            got[i],
            want[i]
        );
        let hint = if sent[i] >= 0x80 {
            HINT_CHANGED
        } else if !t.plain && got[i] == sent[i] {
            HINT_UPPER
        } else if t.plain && got[i] == sent[i].to_ascii_uppercase() {
            HINT_PLAIN
        } else {
            HINT_GARBLED
        };
        return Err(fail(detail, hint));
    }
    if got.len() < want.len() {
        return Err(fail(
            format!(
                "{} of {} bytes back, then end-of-file",
                got.len(),
                want.len()
            ),
            HINT_LOST,
        ));
    }
    if got.len() > want.len() {
        return Err(fail(
            format!("{} bytes back for {} sent", got.len(), want.len()),
            HINT_GARBLED,
        ));
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn in_mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// `hello` comes back as `HELLO`, with no newline needed; a mixed line with UTF-8 keeps its
/// non-ASCII bytes; several messages on one connection come back in order.
pub fn hello(t: &Target) -> Verdict {
    let mut c = t.connect().map_err(|e| fail(e, HINT_NO_REPLY))?;
    let mut msgs: Vec<Vec<u8>> = vec![
        b"hello".to_vec(),
        "Mixed Case 123, ünïcödé ß ok?\n".as_bytes().to_vec(),
    ];
    msgs.extend((0..20).map(|i| format!("message {i} of twenty\n").into_bytes()));
    let started = Instant::now();
    for msg in &msgs {
        let shown = String::from_utf8_lossy(msg);
        let got = round_trip(&mut c, msg)
            .map_err(|e| fail(format!("sent {shown:?}: {e}"), HINT_NO_REPLY))?;
        compare(msg, &got, &t.expect(msg), t).map_err(|f| Failure {
            detail: format!("sent {shown:?}, got {:?}", String::from_utf8_lossy(&got)),
            ..f
        })?;
    }
    Ok(format!(
        "{} round trips on one connection in {}",
        msgs.len(),
        ms(started.elapsed())
    ))
}

/// 256 KiB of random bytes, written in random-sized chunks by one thread while another reads,
/// come back byte for byte; then the client half-closes and the server closes after it.
pub fn binary(t: &Target) -> Verdict {
    let mut c = t.connect().map_err(|e| fail(e, HINT_NO_REPLY))?;
    let mut rng = Rng::new(0x5eed_1234);
    let data = rng.bytes(256 * 1024);
    let expected = t.expect(&data);
    let mut writer = c.try_clone().map_err(|e| fail(e.to_string(), ""))?;
    let sent = data.clone();
    let started = Instant::now();
    let sender = thread::spawn(move || -> Result<(), String> {
        let mut done = 0;
        while done < sent.len() {
            let n = match rng.range(0, 9) {
                0 => 1,
                1..=3 => rng.range(1, 64),
                _ => rng.range(1, 16 * 1024),
            }
            .min(sent.len() - done);
            writer
                .write_all(&sent[done..done + n])
                .map_err(|e| format!("write after {done} bytes: {e}"))?;
            done += n;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("half-close: {e}"))
    });
    let (got, end) = read_to_end(&mut c);
    let took = started.elapsed();
    let sender = sender.join().unwrap_or(Err("the writer panicked".into()));
    if got.len() < expected.len() && expected.starts_with(&got) && end == End::TimedOut {
        return Err(fail(
            format!(
                "{} of {} bytes back, then nothing (timed out)",
                got.len(),
                expected.len()
            ),
            if got.is_empty() {
                HINT_NO_REPLY
            } else {
                HINT_LOST
            },
        ));
    }
    compare(&data, &got, &expected, t)?;
    if let Err(e) = sender {
        return Err(fail(e, HINT_LOST));
    }
    match end {
        End::Eof => Ok(format!(
            "256 KiB in random chunks back byte-exact in {}",
            ms(took)
        )),
        End::TimedOut => Err(fail(
            "every byte back, but no end-of-file after the client's",
            HINT_NO_EOF,
        )),
        End::Error(e) => Err(fail(
            format!("every byte back, then {e} instead of end-of-file"),
            HINT_NO_EOF,
        )),
    }
}

/// A client that sends and then half-closes (shutdown(SHUT_WR)) still gets its whole reply,
/// then end-of-file. First a short message whose last byte and FIN leave in one segment (so
/// the server sees end-of-file right after the data, before it has replied), then 64 KiB.
pub fn half_close(t: &Target) -> Verdict {
    let started = Instant::now();
    for (round, size) in [(1, 0), (2, 64 * 1024)] {
        let mut c = t.connect().map_err(|e| fail(e, HINT_NO_REPLY))?;
        let mut msg = b"last words, then EOF".to_vec();
        msg.extend((0..size).map(|i| b"abcdefghij\n"[i % 11]));
        let mut writer = c.try_clone().map_err(|e| fail(e.to_string(), ""))?;
        let sent = msg.clone();
        let sender = thread::spawn(move || -> io::Result<()> {
            // TCP_CORK holds the data back until shutdown, which sends it with the FIN.
            let _ =
                nix::sys::socket::setsockopt(&writer, nix::sys::socket::sockopt::TcpCork, &true);
            writer.write_all(&sent)?;
            writer.shutdown(Shutdown::Write)
        });
        let (got, end) = read_to_end(&mut c);
        if let Ok(Err(e)) = sender.join() {
            return Err(fail(format!("round {round}: write: {e}"), HINT_NO_REPLY));
        }
        let want = t.expect(&msg);
        let what = format!("round {round}, {} bytes then EOF", msg.len());
        if got.len() < want.len() && want.starts_with(&got) {
            let how = match &end {
                End::Eof => "end-of-file".to_owned(),
                End::TimedOut => "nothing (timed out)".to_owned(),
                End::Error(e) => e.clone(),
            };
            let hint = if end == End::TimedOut {
                HINT_NO_REPLY
            } else {
                HINT_EOF
            };
            return Err(fail(
                format!(
                    "{what}: {} of {} bytes back, then {how}",
                    got.len(),
                    want.len()
                ),
                hint,
            ));
        }
        compare(&msg, &got, &want, t).map_err(|f| Failure {
            detail: format!("{what}: {}", f.detail),
            ..f
        })?;
        match end {
            End::Eof => {}
            End::TimedOut => return Err(fail(format!("{what}: no end-of-file"), HINT_NO_EOF)),
            End::Error(e) => {
                return Err(fail(
                    format!("{what}: whole reply, then {e} instead of end-of-file"),
                    HINT_NO_EOF,
                ));
            }
        }
    }
    Ok(format!(
        "whole reply, then end-of-file (20 B and 64 KiB) in {}",
        ms(started.elapsed())
    ))
}

/// Fifty clients that reset their connection in the middle of a stream (SO_LINGER 0) leave the
/// server alive and serving.
pub fn resets(t: &Target) -> Verdict {
    let chunk = vec![b'x'; 64 * 1024];
    for i in 0..50 {
        // The first client fails before any reset: the server does not answer at all.
        let hint = if i == 0 { HINT_NO_REPLY } else { HINT_RESETS };
        let step = |e: String| fail(format!("client {i} of 50: {e}"), hint);
        let mut c = t.connect().map_err(step)?;
        // Some reset before the server replied, some after; none read their reply.
        c.write_all(&chunk[..if i % 2 == 0 { 1000 } else { chunk.len() }])
            .map_err(|e| step(format!("write: {e}")))?;
        if i % 3 == 0 {
            read_exactly(&mut c, 1).map_err(step)?;
        }
        reset_on_close(&c).map_err(step)?;
        drop(c);
    }
    let mut c = t
        .connect()
        .map_err(|e| fail(format!("after 50 resets: {e}"), HINT_RESETS))?;
    let got = round_trip(&mut c, b"still there?")
        .map_err(|e| fail(format!("after 50 resets: {e}"), HINT_RESETS))?;
    compare(b"still there?", &got, &t.expect(b"still there?"), t)?;
    Ok("50 clients reset mid-stream; the server still answers".to_owned())
}

/// `n` clients connected at once, each doing three round trips interleaved with all the
/// others: every client writes, then every client reads its own reply.
pub fn concurrent(t: &Target, n: usize) -> Verdict {
    let started = Instant::now();
    let mut clients = connect_many(t, n)?;
    for round in 0..3 {
        let msgs: Vec<String> = (0..clients.len())
            .map(|i| format!("client {i} says hi in round {round}\n"))
            .collect();
        for (i, (c, msg)) in clients.iter_mut().zip(&msgs).enumerate() {
            c.write_all(msg.as_bytes()).map_err(|e| {
                fail(
                    format!("client {i} round {round}: write: {e}"),
                    HINT_CONCURRENT,
                )
            })?;
        }
        for (i, (c, msg)) in clients.iter_mut().zip(&msgs).enumerate() {
            let msg = msg.as_bytes();
            let got = read_exactly(c, msg.len()).map_err(|e| {
                fail(
                    format!("client {i} of {n}, round {round}: {e}"),
                    HINT_CONCURRENT,
                )
            })?;
            compare(msg, &got, &t.expect(msg), t).map_err(|f| Failure {
                detail: format!("client {i} round {round}: {}", f.detail),
                ..f
            })?;
        }
    }
    Ok(format!(
        "{n} clients at once, 3 interleaved round trips each, in {}",
        ms(started.elapsed())
    ))
}

/// What the slow-reader scenario saw.
#[derive(Debug)]
pub struct SlowReader {
    pub verdict: Verdict,
    /// The slow client's writes stalled: the server stopped reading it (back-pressure).
    pub stalled: bool,
    /// Server RSS growth in KiB while the slow client was stuck, when its pid was known.
    pub grown_kib: Option<u64>,
    /// Bytes the slow client sent.
    pub total: usize,
}

/// Where the slow client's writer is.
#[derive(Clone, Copy, PartialEq)]
enum Sending {
    Going,
    Stalled,
    Done,
}

/// A slow reader: one client sends `mib` MiB without reading a byte. Other clients must still
/// be answered within `t.prompt` (a blocking send to the slow one stalls everyone), and once the
/// slow one reads, every byte must come back in order (a non-blocking send whose count is
/// ignored loses bytes). With `pid`, the server's RSS growth meanwhile is measured too.
pub fn slow_reader(t: &Target, mib: usize, pid: Option<Pid>) -> SlowReader {
    let total = mib * 1024 * 1024;
    let rss = |pid: Pid| status_field(pid, "VmRSS").ok();
    let rss_before = pid.and_then(rss);
    let mut outcome = SlowReader {
        verdict: Ok(String::new()),
        stalled: false,
        grown_kib: None,
        total,
    };
    let mut greedy = match t.connect() {
        Ok(c) => c,
        Err(e) => {
            outcome.verdict = Err(fail(e, HINT_NO_REPLY));
            return outcome;
        }
    };
    let data: Arc<Vec<u8>> = Arc::new(
        (0..total)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789 \n"[i % 38])
            .collect(),
    );
    let state = Arc::new((Mutex::new(Sending::Going), Condvar::new()));
    let mut writer = greedy.try_clone().expect("clone a socket");
    writer
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("SO_SNDTIMEO");
    let (data2, state2) = (Arc::clone(&data), Arc::clone(&state));
    // How far the sender got, for a server too slow to take everything in time.
    let progress = Arc::new(AtomicUsize::new(0));
    let progress2 = Arc::clone(&progress);
    let patience = t.patience;
    let sender = thread::spawn(move || -> Result<usize, String> {
        let mut sent = 0;
        let deadline = Instant::now() + patience * 4;
        let set = |s| {
            let (lock, cond) = &*state2;
            let mut now = lock.lock().unwrap();
            if *now != Sending::Stalled || s == Sending::Done {
                *now = s;
            }
            cond.notify_all();
        };
        let result = loop {
            if sent == data2.len() {
                break writer
                    .shutdown(Shutdown::Write)
                    .map(|()| sent)
                    .map_err(|e| format!("half-close: {e}"));
            }
            if Instant::now() > deadline {
                break Err(format!("{TOOK_TOO_LONG} {:?}", patience * 4));
            }
            match writer.write(&data2[sent..(sent + 64 * 1024).min(data2.len())]) {
                Ok(n) => {
                    sent += n;
                    progress2.store(sent, Ordering::SeqCst);
                }
                // The write timed out: the server has stopped reading us.
                Err(e) if timed_out(&e) => set(Sending::Stalled),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(format!("write after {sent} bytes: {e}")),
            }
        };
        set(Sending::Done);
        result
    });
    // Wait until the slow client is stuck (or has sent everything: nothing held it back).
    {
        let (lock, cond) = &*state;
        let guard = lock.lock().unwrap();
        let guard = cond
            .wait_timeout_while(guard, patience * 4, |s| *s == Sending::Going)
            .unwrap()
            .0;
        outcome.stalled = *guard == Sending::Stalled;
    }

    // Meanwhile another client is served as usual, each reply within t.prompt.
    let late = t.prompt.max(Duration::from_secs(3)).min(patience);
    let mut worst = Duration::ZERO;
    let mut stalled_everyone = None;
    let mut wrong: Option<Failure> = None;
    match t.connect() {
        Err(e) => stalled_everyone = Some(e),
        Ok(mut polite) => {
            let _ = polite.set_read_timeout(Some(late));
            for i in 0..20 {
                let msg = format!("polite request {i}\n");
                let started = Instant::now();
                match round_trip(&mut polite, msg.as_bytes()) {
                    Ok(got) if got == t.expect(msg.as_bytes()) => {
                        worst = worst.max(started.elapsed());
                    }
                    Ok(got) => {
                        let want = t.expect(msg.as_bytes());
                        wrong = compare(msg.as_bytes(), &got, &want, t)
                            .err()
                            .map(|f| Failure {
                                detail: format!(
                                    "the other client got {:?} for {msg:?}",
                                    String::from_utf8_lossy(&got)
                                ),
                                ..f
                            });
                        break;
                    }
                    Err(e) => {
                        stalled_everyone = Some(format!(
                            "the other client's request {i}: {e} after {}",
                            ms(started.elapsed())
                        ));
                        break;
                    }
                }
            }
            if stalled_everyone.is_none() && wrong.is_none() && worst > t.prompt {
                stalled_everyone = Some(format!(
                    "the other client's slowest reply took {} (more than {})",
                    ms(worst),
                    ms(t.prompt)
                ));
            }
        }
    }
    if let (Some(pid), Some(before)) = (pid, rss_before) {
        outcome.grown_kib = rss(pid).map(|now| now.saturating_sub(before));
    }

    // Now the slow client reads: everything must come back, in order.
    let mut buf = vec![0u8; 64 * 1024];
    let mut checked = 0;
    let mut lost = None;
    let mut ended = false; // an end-of-file came before the whole reply
    while checked < total {
        match greedy.read(&mut buf) {
            Ok(0) => {
                ended = true;
                lost = Some(format!(
                    "the slow client got {} of {} back, then end-of-file",
                    mib_and_bytes(checked),
                    in_mib(total)
                ));
                break;
            }
            Ok(n) => {
                let n = n.min(total - checked);
                let want = t.expect(&data[checked..checked + n]);
                if let Some(i) = buf[..n].iter().zip(&want).position(|(a, b)| a != b) {
                    let sent = &data[checked..checked + n];
                    match compare(sent, &buf[..n], &want, t) {
                        // Bytes dropped from the middle of the stream shift the rest.
                        Err(f) if f.hint != HINT_GARBLED => {
                            wrong.get_or_insert(Failure {
                                detail: format!(
                                    "the slow client's reply, at byte {}: {}",
                                    checked + i,
                                    f.detail
                                ),
                                ..f
                            });
                        }
                        _ => {
                            lost = Some(format!(
                                "the slow client's reply differs from byte {} of {}: bytes missing",
                                checked + i,
                                in_mib(total)
                            ));
                        }
                    }
                    break;
                }
                checked += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                lost = Some(format!(
                    "the slow client got {} of {} back, then {}",
                    mib_and_bytes(checked),
                    in_mib(total),
                    if timed_out(&e) {
                        "nothing more (timed out)".to_owned()
                    } else {
                        e.to_string()
                    }
                ));
                break;
            }
        }
    }
    drop(greedy);
    let sent = sender.join().unwrap_or(Err("the writer panicked".into()));
    let cut_off = match &sent {
        Err(e) if lost.is_some() || checked < total => Some(e.clone()),
        _ => None,
    };
    if let Some(wrong) = wrong {
        outcome.verdict = Err(wrong);
        return outcome;
    }
    // The sender gave up on a server that was taking its bytes too slowly, and everything sent
    // came back: nothing was lost, the rest was never sent.
    let taken = progress.load(Ordering::SeqCst);
    if let (Err(e), Some(_), None) = (&sent, &lost, &stalled_everyone)
        && e.starts_with(TOOK_TOO_LONG)
        && checked >= taken
    {
        outcome.verdict = Err(fail(
            format!(
                "the server took only {} of {} in {:?}, and every byte of it came back",
                in_mib(taken),
                in_mib(total),
                patience * 4
            ),
            HINT_TOO_SLOW,
        ));
        return outcome;
    }
    outcome.verdict = match (stalled_everyone, lost) {
        (None, None) => Ok(format!(
            "another client's replies within {} while one sent {} without reading; all {} back",
            ms(worst),
            in_mib(total),
            in_mib(total)
        )),
        (Some(s), None) => Err(fail(s, HINT_BLOCKING_SEND)),
        (None, Some(l)) => match cut_off {
            Some(e) if e.contains("reset") || e.contains("pipe") => Err(fail(
                format!("{l}; the slow client's write failed: {e}"),
                HINT_SLOW_CLOSED,
            )),
            // Every byte so far right, then end-of-file, after ours: the server closed on
            // reading our end-of-file, dropping what it still owed. (A small reply may all
            // fit in the socket buffers before that: the half-close check can miss it.)
            _ if ended && sent.is_ok() => Err(fail(
                format!("{l}, after the client's own end-of-file"),
                HINT_EOF,
            )),
            _ => Err(fail(l, HINT_COUNT_IGNORED)),
        },
        // Nobody got a byte: not a send problem, no reply at all.
        (Some(s), Some(l)) if checked == 0 => Err(fail(format!("{s}; {l}"), HINT_NO_REPLY)),
        (Some(s), Some(l)) => Err(fail(format!("{s}; {l}"), HINT_BOTH)),
    };
    outcome
}

/// How the slow client's sender says it gave up on a server that takes its bytes too slowly.
const TOOK_TOO_LONG: &str = "sending took over";

fn mib_and_bytes(bytes: usize) -> String {
    format!("{} ({bytes} bytes)", in_mib(bytes))
}

/// The memory verdict of a slow-reader run.
pub fn memory(run: &SlowReader) -> Verdict {
    match run.grown_kib {
        None => Err(fail(
            "the server's RSS could not be read from /proc",
            "memory needs the server's process: start it with --spawn",
        )),
        Some(kib) if kib > MEMORY_LIMIT_KIB => Err(fail(
            format!(
                "RSS grew by {} while one client sent {} without reading (limit {})",
                in_mib(kib as usize * 1024),
                in_mib(run.total),
                in_mib(MEMORY_LIMIT_KIB as usize * 1024)
            ),
            HINT_MEMORY,
        )),
        Some(kib) => Ok(format!(
            "RSS grew by {} while one client sent {} without reading",
            in_mib(kib as usize * 1024),
            in_mib(run.total)
        )),
    }
}

/// The share of one core the server uses while `conns` clients sit connected and silent,
/// measured over `window` after every client has had one reply (so all are accepted).
pub fn idle_cpu_share(
    t: &Target,
    pid: Pid,
    conns: usize,
    window: Duration,
) -> Result<f64, Failure> {
    let mut clients = connect_many(t, conns)?;
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("idle {i}");
        let got = round_trip(c, msg.as_bytes())
            .map_err(|e| fail(format!("idle client {i}: {e}"), HINT_CONCURRENT))?;
        compare(msg.as_bytes(), &got, &t.expect(msg.as_bytes()), t)?;
    }
    cpu_share(pid, window).map_err(|e| fail(format!("/proc/{pid}/stat: {e}"), ""))
}

/// CPU while 100 clients sit idle: ~0 for a server that sleeps in the kernel.
pub fn idle_cpu(t: &Target, pid: Pid) -> Verdict {
    let share = idle_cpu_share(t, pid, 100, Duration::from_secs(1))?;
    let figure = format!("{:.1}% of a core with 100 idle clients", share * 100.0);
    if share > IDLE_CPU_LIMIT {
        Err(fail(figure, HINT_BUSY))
    } else {
        Ok(figure)
    }
}
