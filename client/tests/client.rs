//! Drives the real client binary against small servers written here, each unlike ours in one
//! way: replies in fragments, without a newline, late, or a server that hangs up early; and
//! against one nobody here wrote, Python's `socketserver`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

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

/// A running client with its stdout and stderr collected by threads.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
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
            stdin: child.stdin.take(),
            stdout: collect(child.stdout.take().unwrap()),
            stderr: collect(child.stderr.take().unwrap()),
            child,
            out: Vec::new(),
        }
    }

    /// Starts the client with all of `input` on its stdin, then EOF.
    fn piped(args: &[&str], input: &str) -> Client {
        let mut client = Client::start(args);
        let mut stdin = client.stdin.take().unwrap();
        // A client that cannot connect exits without reading: then this write fails, harmlessly.
        let _ = stdin.write_all(input.as_bytes());
        client
    }

    fn type_in(&mut self, input: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is still open");
        stdin.write_all(input.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until the client's stdout holds `needle`; panics with what it holds at the deadline.
    fn wait_for_stdout(&mut self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !String::from_utf8_lossy(&self.out).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(chunk) => self.out.extend(chunk),
                Err(_) => panic!("no {needle:?} on stdout; got {:?}", lossy(&self.out)),
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

#[test]
fn pipe_mode_prints_each_reply_in_order() {
    let addr = serve(|stream| {
        let mut writer = stream.try_clone().unwrap();
        let mut stream = stream;
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            writer.write_all(&buf[..n].to_ascii_uppercase()).unwrap();
        }
    });
    // The empty line is skipped (or an echoed "\n" would show); the last line gets its newline.
    let client = Client::piped(&[&addr.to_string()], "hello\n\nworld");
    let (status, out, err) = client.finish();
    assert_eq!(out, "HELLO\nWORLD\n");
    assert_eq!(err, "");
    assert!(status.success(), "{status}");
}

#[test]
fn a_reply_in_two_fragments_is_one_reply() {
    // "HEL", a pause shorter than the 1 s the client gives a reply without newline, "LO\n".
    // Had the client moved on after "HEL", "WORLD" would follow it, and "HEL" gets a newline.
    let addr = serve(|stream| {
        per_line(stream, |out, line| {
            let reply = format!("{}\n", line.to_uppercase());
            let (head, tail) = reply.split_at(3);
            out.write_all(head.as_bytes()).unwrap();
            thread::sleep(Duration::from_millis(300));
            out.write_all(tail.as_bytes()).unwrap();
        })
    });
    let (status, out, err) = Client::piped(&[&addr.to_string()], "hello\nworld\n").finish();
    assert_eq!(out, "HELLO\nWORLD\n", "stderr: {err}");
    assert!(status.success(), "{status}");
}

#[test]
fn replies_without_newline_are_printed() {
    let addr = serve(|stream| {
        per_line(stream, |out, line| {
            out.write_all(line.to_uppercase().as_bytes()).unwrap();
        })
    });
    let (status, out, err) = Client::piped(&[&addr.to_string()], "hello\nworld\n").finish();
    // Each reply on its own line: the client ends a reply that lacks a newline.
    assert_eq!(out, "HELLO\nWORLD\n", "stderr: {err}");
    assert!(status.success(), "{status}");
}

#[test]
fn a_line_and_a_fragment_make_one_reply() {
    // The lecture's case: `HELLO\n_SB`, a full line then bytes with no newline after them.
    let addr = serve(|stream| {
        per_line(stream, |out, line| {
            write!(out, "{}\n_SB", line.to_uppercase()).unwrap();
        })
    });
    let (status, out, err) = Client::piped(&[&addr.to_string()], "hello\nworld\n").finish();
    assert_eq!(out, "HELLO\n_SB\nWORLD\n_SB\n", "stderr: {err}");
    assert!(status.success(), "{status}");
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
fn nothing_listening_on_a_name_suggests_an_address_the_servers_take() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (status, _, err) = Client::piped(&[&format!("localhost:{port}")], "hi\n").finish();
    assert!(!status.success());
    // The servers parse IP:PORT only, so the hint must not repeat the name.
    let hint = err
        .split("cargo run -p select -- ")
        .nth(1)
        .expect("a hint with an address");
    assert!(!hint.contains("localhost"), "{err:?}");
    assert!(hint.contains(&port.to_string()), "{err:?}");
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
    let addr = serve(closes_after_first_line);
    let (status, out, err) = Client::piped(&[&addr.to_string()], "hello\nworld\n").finish();
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

#[test]
fn help_mentions_follow() {
    let out = Command::new(CLIENT).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--follow"));
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
