//! Drives the real client binary against small servers written here, each unlike ours in one
//! way: replies in fragments, without a newline, late, or a server that hangs up early; against
//! one nobody here wrote, Python's `socketserver`; and against the workspace's own servers.
//! The client behaves differently on a terminal (the lecture's lock-step loop, a prompt) and in a
//! pipe (full duplex), so the terminal cases run it on a pseudo-terminal of its own.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use conformance::{Server, binary};
use nix::pty::{Winsize, openpty};
use nix::sys::termios::{LocalFlags, tcgetattr};

const CLIENT: &str = env!("CARGO_BIN_EXE_client");
/// Generous: the slowest case needs ~3 s (two 1 s quiet waits and a drain).
const DEADLINE: Duration = Duration::from_secs(15);

/// Starts a server on a free loopback port; each connection runs `handler` on its own thread.
fn serve(handler: impl Fn(TcpStream) + Send + Sync + Copy + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || handler(stream));
        }
    });
    addr
}

/// Replies to each line with `reply(line)`; closes at EOF.
fn per_line(stream: TcpStream, reply: impl Fn(&mut TcpStream, &str)) {
    let mut writer = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        reply(&mut writer, &line);
    }
}

/// A running client with its stdout and stderr collected by threads. On a terminal, stdin is
/// the keyboard, stdout is the screen, and stderr shows there too.
struct Client {
    child: Child,
    stdin: Option<File>,
    /// The terminal's device (`/dev/pts/N`), when it runs on one.
    terminal: Option<PathBuf>,
    stdout: Receiver<Vec<u8>>,
    stderr: Receiver<Vec<u8>>,
    out: Vec<u8>,
}

fn collect(mut pipe: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    rx
}

impl Client {
    fn start(args: &[&str]) -> Client {
        let mut child = Command::new(CLIENT)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Client {
            stdin: child
                .stdin
                .take()
                .map(|stdin| File::from(OwnedFd::from(stdin))),
            stdout: collect(child.stdout.take().unwrap()),
            stderr: collect(child.stderr.take().unwrap()),
            terminal: None,
            child,
            out: Vec::new(),
        }
    }

    /// Starts the client on a pseudo-terminal of its own, 80 columns wide, as a person runs it.
    fn on_terminal(args: &[&str]) -> Client {
        let size = Winsize {
            ws_row: 24,
            ws_col: COLUMNS as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(&size, None).unwrap();
        let slave = || Stdio::from(pty.slave.try_clone().unwrap());
        let child = Command::new(CLIENT)
            .args(args)
            .stdin(slave())
            .stdout(slave())
            .stderr(slave())
            .spawn()
            .unwrap();
        let device = fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
        // Only the client holds the terminal now: when it exits, reading the screen ends.
        drop(pty.slave);
        let screen = File::from(pty.master);
        let (_, no_stderr) = mpsc::channel();
        Client {
            stdin: Some(screen.try_clone().unwrap()),
            stdout: collect(screen),
            stderr: no_stderr,
            terminal: Some(device),
            child,
            out: Vec::new(),
        }
    }

    /// Starts the client with all of `input` on its stdin, then EOF.
    /// (From a thread: a client that reads its stdin slowly must not hold up the test.)
    fn piped(args: &[&str], input: &str) -> Client {
        let mut client = Client::start(args);
        let mut stdin = client.stdin.take().unwrap();
        let input = input.to_owned();
        // A client that cannot connect exits without reading: then this write fails, harmlessly.
        thread::spawn(move || stdin.write_all(input.as_bytes()));
        client
    }

    fn type_in(&mut self, input: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is still open");
        stdin.write_all(input.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until the client's stdout holds `needle`; panics with what it holds at the deadline.
    fn wait_for_stdout(&mut self, needle: &str) {
        self.wait_until(needle, |out| lossy(out).contains(needle));
    }

    /// Waits until `done` holds for the client's stdout so far; panics at the deadline.
    fn wait_until(&mut self, what: &str, done: impl Fn(&[u8]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(&self.out) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(chunk) => self.out.extend(chunk),
                Err(_) => panic!("no {what} on stdout; got {:?}", lossy(&self.out)),
            }
        }
    }

    /// Waits for the client to exit (killing it at the deadline): status, stdout, stderr.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!(
                    "the client did not exit; stdout so far {:?}",
                    lossy(&self.out)
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        // The pipes close with the process, so these end.
        self.out.extend(self.stdout.iter().flatten());
        let err: Vec<u8> = self.stderr.iter().flatten().collect();
        (status, lossy(&self.out), lossy(&err))
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Columns of the terminal the tests give the client.
const COLUMNS: usize = 80;

/// What a terminal of COLUMNS columns shows after `bytes`, row by row. Knows what the client and
/// the terminal's own echo write (text, CR, LF, backspace, cursor up, erase to the end of the
/// line or screen, dim); anything else fails the test rather than be misread.
fn render(bytes: &[u8]) -> Vec<String> {
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0_usize, 0_usize);
    let mut chars = lossy(bytes).chars().collect::<Vec<char>>().into_iter();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => row += 1,
            '\x08' => col = col.saturating_sub(1),
            '\x1b' => {
                assert_eq!(chars.next(), Some('['), "{:?}", lossy(bytes));
                let mut sequence = String::new();
                let end = chars.by_ref().find(|c| {
                    sequence.push(*c);
                    c.is_ascii_alphabetic()
                });
                let n: usize = sequence[..sequence.len() - 1].parse().unwrap_or(1);
                match (sequence.as_str(), end) {
                    (_, Some('A')) => row = row.saturating_sub(n),
                    ("K" | "0K", _) => rows[row].truncate(col), // erase to the end of the line
                    ("J" | "0J", _) => {
                        rows[row].truncate(col); // ... and of the screen
                        rows.truncate(row + 1);
                    }
                    (_, Some('m')) => {} // colours and dimness
                    _ => panic!("ESC [{sequence} on the screen: {:?}", lossy(bytes)),
                }
            }
            c if c < ' ' => panic!("{c:?} on the screen: {:?}", lossy(bytes)),
            c => {
                if col == COLUMNS {
                    (row, col) = (row + 1, 0); // the line wraps
                }
                if rows.len() <= row {
                    rows.resize(row + 1, Vec::new());
                }
                let line = &mut rows[row];
                line.resize(line.len().max(col + 1), ' ');
                line[col] = c;
                col += 1;
            }
        }
        if rows.len() <= row {
            rows.resize(row + 1, Vec::new());
        }
    }
    // Blank cells at the end of a row look the same as none.
    let text = |line: Vec<char>| String::from_iter(line).trim_end().to_owned();
    rows.into_iter().map(text).collect()
}

/// A workspace binary's path, built first if need be.
fn bin(name: &str) -> String {
    binary(name).to_str().expect("a UTF-8 path").to_owned()
}

/// Echoes every byte upper-cased, in whatever pieces they come; closes at EOF.
fn upper_echo(stream: TcpStream) {
    let mut writer = stream.try_clone().unwrap();
    let mut stream = stream;
    let mut buf = [0; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        if writer.write_all(&buf[..n].to_ascii_uppercase()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// In a pipe: full duplex, no prompt.

#[test]
fn pipe_mode_prints_each_reply_in_order() {
    let addr = serve(upper_echo);
    // The empty line is skipped (or an echoed "\n" would show); the last line gets its newline.
    let client = Client::piped(&[&addr.to_string()], "hello\n\nworld");
    let (status, out, err) = client.finish();
    assert_eq!(out, "HELLO\nWORLD\n");
    assert_eq!(err, "");
    assert!(status.success(), "{status}");
}

/// About `bytes` of text in lines of 999 characters, as `base64 -w 999` makes of random bytes.
fn base64_lines(bytes: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = conformance::Rng::new(13);
    let mut text = String::with_capacity(bytes + bytes / 999 + 1);
    for i in 0..bytes {
        text.push(char::from(ALPHABET[rng.range(0, 63)]));
        if i % 999 == 998 {
            text.push('\n');
        }
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[test]
fn pipe_mode_streams_megabytes_byte_exact() {
    // 5 MB in 5,000 lines. In lock step, with a 50 ms wait for the end of each reply, that took
    // minutes; streaming, it takes a second or two. The deadline of `finish` only catches the
    // lock-step client: the time itself is measured by `pipe_throughput`, not asserted.
    let addr = serve(upper_echo);
    let input = base64_lines(5_000_000);
    let (status, out, err) = Client::piped(&[&addr.to_string()], &input).finish();
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out.len(), input.len(), "stderr: {err}");
    assert!(out == input.to_ascii_uppercase(), "the bytes differ");
}

/// `cargo test --release -p client -- --ignored --nocapture pipe_throughput`: 5 MB through the
/// client and the epoll server and back, in bytes per second.
#[test]
#[ignore = "a measurement for the report, not a check"]
fn pipe_throughput() {
    let server = Server::start(&bin("epoll"), &[]);
    let input = base64_lines(5_000_000);
    let started = Instant::now();
    let (status, out, err) = Client::piped(&[&server.addr.to_string()], &input).finish();
    let took = started.elapsed();
    assert!(
        status.success() && out == input.to_ascii_uppercase(),
        "{err}"
    );
    let rate = input.len() as f64 / took.as_secs_f64();
    println!(
        "{} bytes there and back in {took:.2?}: {rate:.0} bytes/s",
        input.len()
    );
}

#[test]
fn a_server_that_never_closes_is_left_after_a_quiet_second() {
    // Echoes, but ignores our end of input and keeps the connection open.
    let addr = serve(|stream| {
        let keep = stream.try_clone().unwrap();
        upper_echo(stream);
        thread::sleep(DEADLINE);
        drop(keep);
    });
    let (status, out, err) = Client::piped(&[&addr.to_string()], "hello\n").finish();
    assert_eq!(out, "HELLO\n");
    assert_eq!(err, "");
    assert!(status.success(), "{status}");
}

#[test]
fn empty_input_to_a_silent_server_ends_after_a_quiet_second() {
    // `client PORT < /dev/null` against a server that neither speaks nor closes: nothing was
    // sent, so nothing is owed, and the client leaves after the quiet second, as it does on a
    // terminal after an immediate Ctrl-D (it used to wait for ever).
    let addr = serve(|stream| {
        thread::sleep(DEADLINE);
        drop(stream);
    });
    let (status, out, err) = Client::piped(&[&addr.to_string()], "").finish();
    assert_eq!(out, "");
    assert_eq!(err, "");
    assert!(status.success(), "{status}");
}

#[test]
fn a_chat_in_a_pipe_is_heard() {
    // The chat room answers no line with its echo: what a pipe says must still reach the room.
    let chat = Server::start(&bin("selectors-chat"), &[]);
    let mut member = BufReader::new(chat.connect());
    let mut line = String::new();
    member.read_line(&mut line).unwrap(); // its welcome
    let (status, out, err) = Client::piped(&[&chat.addr.to_string()], "hi from a pipe\n").finish();
    assert!(status.success(), "{status}: {err}");
    assert!(out.contains("welcome"), "{out:?}");
    while !line.contains("hi from a pipe") {
        line.clear();
        assert_ne!(
            member.read_line(&mut line).unwrap(),
            0,
            "the room never heard it"
        );
    }
}

#[test]
fn a_slow_first_byte_is_waited_for() {
    // Longer than any quiet timeout: before the first byte, the client must wait as long as it takes.
    let addr = serve(|stream| {
        per_line(stream, |out, line| {
            thread::sleep(Duration::from_millis(1500));
            writeln!(out, "{}", line.to_uppercase()).unwrap();
        })
    });
    let (status, out, err) = Client::piped(&[&addr.to_string()], "hello\nworld\n").finish();
    assert_eq!(out, "HELLO\nWORLD\n", "stderr: {err}");
    assert!(status.success(), "{status}");
}

/// Answers the first line, then hangs up.
fn closes_after_first_line(stream: TcpStream) {
    let mut writer = stream.try_clone().unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    writer.write_all(line.to_uppercase().as_bytes()).unwrap();
}

#[test]
fn server_gone_while_input_remains_is_an_error() {
    // Our stdin stays open: the server hung up on input it will never read.
    let addr = serve(closes_after_first_line);
    let mut client = Client::start(&[&addr.to_string()]);
    client.type_in("hello\n");
    let (status, out, err) = client.finish();
    assert_eq!(out, "HELLO\n");
    assert!(err.contains("the server closed the connection"), "{err:?}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(!status.success());
}

#[test]
fn server_gone_without_answering_is_an_error() {
    // Reads the line and hangs up: the line we sent never got its reply.
    let addr = serve(|stream| {
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
    });
    let (status, out, err) = Client::piped(&[&addr.to_string()], "hello\n").finish();
    assert_eq!(out, "");
    assert!(err.contains("the server closed the connection"), "{err:?}");
    assert!(!status.success());
}

#[test]
fn server_closing_after_the_last_line_is_the_normal_end() {
    let addr = serve(closes_after_first_line);
    let (status, out, err) = Client::piped(&[&addr.to_string()], "hello\n").finish();
    assert_eq!(out, "HELLO\n");
    assert_eq!(err, "");
    assert!(status.success(), "{status}");
}

#[test]
fn follow_prints_what_the_server_says_unasked() {
    // A line before any input, then an upper-casing echo.
    let addr = serve(|mut stream| {
        stream.write_all(b"WELCOME\n").unwrap();
        per_line(stream, |out, line| {
            writeln!(out, "{}", line.to_uppercase()).unwrap()
        })
    });
    let mut client = Client::start(&[&addr.to_string(), "--follow"]);
    client.wait_for_stdout("WELCOME\n");
    client.type_in("hello\n\n");
    client.wait_for_stdout("HELLO\n");
    client.type_in("world\n");
    client.wait_for_stdout("WORLD\n");
    client.stdin = None; // EOF: the client half-closes, the server closes, the client exits
    let (status, out, err) = client.finish();
    assert_eq!(out, "WELCOME\nHELLO\nWORLD\n");
    assert_eq!(err, "");
    assert!(status.success(), "{status}");
}

#[test]
fn follow_reports_a_server_that_ends_the_session() {
    let addr = serve(|mut stream| {
        stream.write_all(b"BYE\n").unwrap();
    });
    let mut client = Client::start(&[&addr.to_string(), "--follow"]);
    client.wait_for_stdout("BYE\n");
    let stdin = client.stdin.take(); // still open: the user has not finished
    let (status, out, err) = client.finish();
    drop(stdin);
    assert_eq!(out, "BYE\n");
    assert!(err.contains("the server closed the connection"), "{err:?}");
    // In follow mode the server ending the session (the chat's /quit) is a normal end.
    assert!(status.success(), "{status:?}");
}

// ---------------------------------------------------------------------------------------------
// On a terminal: the lecture's loop, one line and one reply at a time.

/// Types `lines` on a terminal, each after its prompt, then Ctrl-D: the screen's text.
fn converse(addr: SocketAddr, lines: &[&str]) -> String {
    let mut client = Client::on_terminal(&[&addr.to_string()]);
    for (i, line) in lines.iter().enumerate() {
        client.wait_until("a prompt", |out| lossy(out).matches(">>: ").count() > i);
        client.type_in(&format!("{line}\n"));
    }
    client.wait_until("the last prompt", |out| {
        lossy(out).matches(">>: ").count() > lines.len()
    });
    client.type_in("\x04");
    let (status, out, _) = client.finish();
    assert!(status.success(), "{status}: {out:?}");
    out.replace("\r\n", "\n")
}

#[test]
fn a_reply_in_two_fragments_is_one_reply() {
    // "HEL", a pause shorter than the 1 s the client gives a reply without newline, "LO\n".
    // Had the client moved on after "HEL", the prompt would follow it, and "HEL" gets a newline.
    let addr = serve(|stream| {
        per_line(stream, |out, line| {
            let reply = format!("{}\n", line.to_uppercase());
            let (head, tail) = reply.split_at(3);
            out.write_all(head.as_bytes()).unwrap();
            thread::sleep(Duration::from_millis(300));
            out.write_all(tail.as_bytes()).unwrap();
        })
    });
    let screen = converse(addr, &["hello", "world"]);
    assert_eq!(screen, ">>: hello\nHELLO\n>>: world\nWORLD\n>>: \n");
}

#[test]
fn replies_without_newline_are_printed() {
    let addr = serve(|stream| {
        per_line(stream, |out, line| {
            out.write_all(line.to_uppercase().as_bytes()).unwrap();
        })
    });
    // Each reply on its own line: the client ends a reply that lacks a newline.
    let screen = converse(addr, &["hello", "world"]);
    assert_eq!(screen, ">>: hello\nHELLO\n>>: world\nWORLD\n>>: \n");
}

#[test]
fn a_line_and_a_fragment_make_one_reply() {
    // The lecture's case: `HELLO\n_SB`, a full line then bytes with no newline after them.
    let addr = serve(|stream| {
        per_line(stream, |out, line| {
            write!(out, "{}\n_SB", line.to_uppercase()).unwrap();
        })
    });
    let screen = converse(addr, &["hello", "world"]);
    assert_eq!(
        screen,
        ">>: hello\nHELLO\n_SB\n>>: world\nWORLD\n_SB\n>>: \n"
    );
}

#[test]
fn a_reply_that_keeps_a_person_waiting_is_explained_once() {
    // The iterative server serves one client at a time: while another holds it, our line waits.
    let server = Server::start(&bin("blocking"), &["--mode", "single"]);
    let mut first = server.connect();
    assert_eq!(conformance::round_trip(&mut first, b"first\n"), b"FIRST\n");
    let mut client = Client::on_terminal(&[&server.addr.to_string()]);
    client.wait_for_stdout(">>: ");
    client.type_in("hello\n");
    client.wait_for_stdout("(no reply yet");
    // Long enough for a second remark, were the first repeated (a wait for nothing, so a sleep).
    thread::sleep(Duration::from_millis(1500));
    drop(first); // the server is free: it reads our line at last
    client.wait_for_stdout("HELLO");
    client.type_in("\x04");
    let (status, out, _) = client.finish();
    assert!(status.success(), "{status}");
    assert_eq!(out.matches("(no reply yet").count(), 1, "{out:?}");
}

#[test]
fn a_server_gone_is_noticed_while_the_user_thinks() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = Client::on_terminal(&[&listener.local_addr().unwrap().to_string()]);
    let (server_side, _) = listener.accept().unwrap();
    client.wait_for_stdout(">>: ");
    drop(server_side); // the server goes away while nobody types
    let (status, out, _) = client.finish();
    assert!(out.contains("the server closed the connection"), "{out:?}");
    assert!(!status.success(), "{status}");
}

#[test]
fn follow_keeps_the_line_being_typed_whole() {
    let chat = Server::start(&bin("selectors-chat"), &[]);
    let mut client = Client::on_terminal(&[&chat.addr.to_string(), "--follow"]);
    client.wait_for_stdout("welcome");
    // Half a line, a typo put right: the client draws it, since the terminal's echo is off.
    client.type_in("half a lin\x7f");
    client.wait_until("the half line", |out| {
        render(out).last().unwrap() == "half a li"
    });
    // Another member speaks while we type: their line goes above ours, ours stays whole.
    let mut member = BufReader::new(chat.connect());
    member.get_mut().write_all(b"hi there\n").unwrap();
    client.wait_until("their line above our half line", |out| {
        let screen = render(out);
        screen[screen.len() - 2].ends_with(": hi there") && screen[screen.len() - 1] == "half a li"
    });
    client.type_in("ne\n");
    let mut line = String::new();
    while !line.ends_with(": half a line\n") {
        line.clear();
        assert_ne!(
            member.read_line(&mut line).unwrap(),
            0,
            "the room never heard it"
        );
    }
    // A line longer than the terminal is wide wraps: all of its rows go down, and come back up
    // whole when erased (Ctrl-U).
    let long = "0123456789".repeat(10);
    client.type_in(&long);
    member.get_mut().write_all(b"again\n").unwrap();
    let (head, tail) = long.split_at(COLUMNS);
    client.wait_until("their line above our wrapped one", |out| {
        let screen = render(out);
        let n = screen.len();
        screen[n - 3].ends_with(": again") && screen[n - 2] == head && screen[n - 1] == tail
    });
    client.type_in("\x15");
    client.wait_until("the wrapped line erased", |out| {
        let screen = render(out);
        screen[screen.len() - 2].ends_with(": again") && screen[screen.len() - 1].is_empty()
    });
    client.type_in("\x04"); // Ctrl-D: leave the room
    let device = client.terminal.clone().unwrap();
    let _keep_it = client.stdin.as_ref().unwrap().try_clone(); // the terminal ends with its last master
    let (status, out, _) = client.finish();
    assert!(status.success(), "{status}: {out:?}");
    // The terminal is as the client found it: lines, echo, Ctrl-C.
    let modes = tcgetattr(File::open(device).unwrap()).unwrap().local_flags;
    let cooked = LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG;
    assert!(modes.contains(cooked), "{modes:?}");
}

// ---------------------------------------------------------------------------------------------
// Addresses.

#[test]
fn nothing_listening_is_one_line_naming_the_address() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let (status, out, err) = Client::piped(&[&addr], "hello\n").finish();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(!status.success());
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(
        err.contains(&addr) && err.contains("cargo run -p select"),
        "{err:?}"
    );
}

#[test]
fn localhost_and_a_bare_port_mean_loopback_everywhere() {
    let start = |name: &str, addr: &str| {
        let mut cmd = Command::new(bin(name));
        cmd.arg(addr);
        Server::spawn(cmd)
    };
    // The servers take both forms, and announce the numeric address they bound.
    let select = start("select", "localhost:0");
    let epoll = start("epoll", "0");
    for server in [&select, &epoll] {
        assert_eq!(server.addr.ip().to_string(), "127.0.0.1");
    }
    // So does the client.
    for addr in [
        format!("localhost:{}", select.addr.port()),
        epoll.addr.port().to_string(),
    ] {
        let (status, out, err) = Client::piped(&[&addr], "hello\n").finish();
        assert_eq!(out, "HELLO\n", "{addr}: {err}");
        assert!(status.success(), "{addr}: {status}");
    }
    // Refused, the same way by all: one parser.
    let refusals: Vec<String> = [CLIENT.to_owned(), bin("select")]
        .iter()
        .map(|program| {
            let out = Command::new(program).arg("localhost").output().unwrap();
            assert!(!out.status.success());
            lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(refusals[0].contains("IP:PORT"), "{refusals:?}");
    assert_eq!(refusals[0], refusals[1]);
}

#[test]
fn help_mentions_follow_and_the_address_forms() {
    let out = Command::new(CLIENT).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = lossy(&out.stdout);
    assert!(help.contains("--follow"), "{help}");
    assert!(
        help.contains("localhost:PORT") && help.contains("bare PORT"),
        "{help}"
    );
}

/// A server nobody here wrote: Python's standard `socketserver`, one thread per client,
/// replying to each `recv` with its bytes upper-cased, as the lecture's servers do.
#[test]
fn works_against_a_python_socketserver() {
    const SERVER: &str = "\
import socketserver, sys
class Upper(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(1024):
            self.request.sendall(data.upper())
server = socketserver.ThreadingTCPServer(('127.0.0.1', 0), Upper)
print(server.server_address[1], flush=True)
server.serve_forever()
";
    let mut python = Command::new("python3")
        .args(["-c", SERVER])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    let mut port = String::new();
    BufReader::new(python.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let addr = format!("127.0.0.1:{}", port.trim());
    let (status, out, err) = Client::piped(&[&addr], "hello\nworld\n").finish();
    python.kill().unwrap();
    python.wait().unwrap();
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out, "HELLO\nWORLD\n");
}

/// An echo server as blocking as ours, its socket buffers capped (else the kernel grows them to
/// tens of MiB): it stops reading from a client whose replies have nowhere to go.
fn small_buffered_echo(mut stream: TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(&stream, sockopt::RcvBuf, &(256 << 10)).unwrap();
    setsockopt(&stream, sockopt::SndBuf, &(256 << 10)).unwrap();
    let mut buf = [0; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        if stream.write_all(&buf[..n].to_ascii_uppercase()).is_err() {
            return;
        }
    }
}

#[test]
fn a_line_longer_than_the_socket_buffers_comes_back() {
    // Sent whole before reading, this line would fill the server's buffers and ours, the
    // server would stop reading to wait for us, and we for it: the client must read as it sends.
    let addr = serve(small_buffered_echo);
    let line = "x".repeat(16 << 20);
    let (status, out, err) = Client::piped(&[&addr.to_string()], &format!("{line}\n")).finish();
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out.len(), line.len() + 1, "stderr: {err}");
    assert!(out.bytes().take(line.len()).all(|b| b == b'X'));
}

/// `client ADDR | head -1`: the reader stops early, and the client ends as `cat` would, by
/// SIGPIPE, with nothing said on stderr (not "Broken pipe").
#[test]
fn a_reader_that_stops_early_ends_the_client_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let addr = serve(upper_echo);
    let mut child = Command::new(CLIENT)
        .arg(addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    let mut stdin = child.stdin.take().unwrap();
    let feeder = thread::spawn(move || {
        for n in 0..200_000 {
            if writeln!(stdin, "line {n}").is_err() {
                return; // the client is gone
            }
        }
    });
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap(); // and the reader is dropped: `head -1` has what it wanted
    assert_eq!(first, "LINE 0\n");
    let err = collect(child.stderr.take().unwrap());
    let status = child.wait().unwrap();
    feeder.join().unwrap();
    let err = lossy(&err.iter().flatten().collect::<Vec<u8>>());
    let sigpipe = nix::sys::signal::Signal::SIGPIPE as i32;
    assert_eq!(status.signal(), Some(sigpipe), "{status}; stderr: {err:?}");
    assert_eq!(err, "");
}
