//! # client: the one client every chapter's server talks to
//!
//! On a terminal it is the lecture's client loop, made sturdy: prompt `>>: `, read a line, send
//! it with a newline, wait for the reply, print it; Ctrl-D ends it. It talks to every server in
//! this workspace and to servers nobody here wrote (a Python socket server, `nc -l 8080`).
//!
//! Run it beside a server:
//!
//! ```text
//! cargo run -p select                              # terminal 1
//! cargo run -p client                              # terminal 2 (and 3, 4 ...)
//! printf 'hello\nworld\n' | cargo run -p client    # no prompt: prints HELLO, then WORLD
//! ```
//!
//! On a terminal, a reply is whatever comes back after a line is sent. The client waits as long
//! as it takes for its first byte (a person behind `nc -l` may be typing it; after a second it
//! says once that it is still waiting), prints bytes as they arrive, and moves on once a whole
//! line is in and 50 ms pass with nothing more, or after 1 s of quiet if no newline ever comes.
//! While you think, it watches the socket too, so a server that goes away is reported at once.
//!
//! From a pipe there is nobody to take turns with (`pipe.rs`): one thread sends stdin as fast as
//! the server takes it while the main thread prints what comes back, so megabytes stream through
//! in a second. At the end of input it half-closes and prints what the server still sends, until
//! it closes or falls quiet.
//!
//! `--follow` is for the chat chapter (`cargo run -p selectors-chat`, then
//! `cargo run -p client -- --follow` in two terminals; `follow.rs`): what others say is printed
//! the moment it arrives, above the line you are typing, which is then drawn again. No prompt
//! there, and no waiting for replies.

mod follow;
mod pipe;

use std::io::{self, BufRead, ErrorKind, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigHandler, Signal, signal};

/// Bytes read per `read` call.
const BUF_SIZE: usize = 64 * 1024;
/// How long to wait for a server to accept us.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A reply is over once a whole line is in and nothing more came for this long ...
const LINE_QUIET: Duration = Duration::from_millis(50);
/// ... or once this long passed with nothing new and still no newline.
const PARTIAL_QUIET: Duration = Duration::from_secs(1);
/// After our EOF, how long a silent server gets before we stop listening to it.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// How long a reply may keep a person waiting before the client says what it waits for.
const NO_REPLY_HINT: Duration = Duration::from_secs(1);

const PROMPT: &[u8] = b">>: ";
const SERVER_CLOSED: &str = "the server closed the connection";
const NO_REPLY: &str = "(no reply yet: the server has not answered your line; see its terminal)";

/// The interactive client for every server here: type a line, see the reply (Ctrl-D quits).
/// Pipe lines in to script it; --follow prints what the server says as it arrives (for the chat).
#[derive(Parser)]
#[command(verbatim_doc_comment)]
#[command(name = "client")]
struct Args {
    /// The server's address: IP:PORT, localhost:PORT, or a bare PORT for 127.0.0.1:PORT.
    #[arg(default_value = support::DEFAULT_ADDR, value_parser = support::parse_addr)]
    addr: SocketAddr,

    /// Print what the server sends the moment it arrives, while you type (the chat chapter).
    #[arg(long)]
    follow: bool,
}

fn main() -> ExitCode {
    // A reader that stops early (`client ADDR | head -1`) ends us as it ends `cat`: quietly, by
    // SIGPIPE. Rust ignores SIGPIPE, which would make it an error message instead. Writes to
    // the socket are unaffected: they use MSG_NOSIGNAL, and a server gone is still an error.
    // SAFETY: no other thread runs yet, and SIG_DFL installs no handler of ours.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("client: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let stream = connect(args.addr)?;
    let terminal = io::stdin().is_terminal();
    match (args.follow, terminal) {
        (false, true) => lock_step(stream),
        (true, true) if io::stdout().is_terminal() => follow::follow(stream),
        (follow, _) => pipe::pipe(stream, follow),
    }
}

/// Connects within a second, or says in one line what to do about it.
fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let err = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(stream) => return Ok(stream),
        Err(err) => err,
    };
    let start = if addr.to_string() == support::DEFAULT_ADDR {
        "cargo run -p select".to_owned()
    } else {
        format!("cargo run -p select -- {addr}")
    };
    match err.kind() {
        ErrorKind::ConnectionRefused => {
            bail!("nothing is listening on {addr}; start a server first, e.g. `{start}`")
        }
        ErrorKind::TimedOut => bail!("no answer from {addr} within 1 s; is a server there?"),
        _ => Err(err).with_context(|| format!("cannot connect to {addr}")),
    }
}

// ANCHOR: lock_step
/// The lecture's loop, on a terminal: one line out, one reply back, then the next line.
fn lock_step(mut stream: TcpStream) -> anyhow::Result<()> {
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout();
    // The line is sent from a second thread while this one prints the reply. An echo server
    // answers while it still reads, and stops reading while its answer waits for us: had we
    // sent all of a line longer than the socket buffers before reading, each side would wait
    // for the other forever.
    let mut sender = stream.try_clone().context("clone the socket")?;
    loop {
        prompt(&mut stream, &mut stdout)?;
        let Some(line) = next_line(&mut stdin).context("read stdin")? else {
            break;
        };
        if line == b"\n" {
            continue; // as in the lecture: an empty line would have nothing to echo
        }
        let (sent, reply) = thread::scope(|scope| {
            let sending = scope.spawn(|| sender.write_all(&line));
            let reply = wait_for_reply(&mut stream, &mut stdout);
            if reply.is_err() {
                // We stop here (stdout failed): wake the sender if it is stuck.
                let _ = stream.shutdown(Shutdown::Both);
            }
            (
                sending.join().expect("the sending thread does not panic"),
                reply,
            )
        });
        sent.map_err(gone)?;
        // A person would type their next line into a dead connection: say so now.
        if let Some(why) = reply?.gone {
            return Err(why);
        }
    }
    writeln!(stdout)?; // after Ctrl-D, so the shell's prompt starts on its own line
    // Half-close: the server reads EOF, sends what it still owes us, and closes. If this fails
    // the connection is already gone, which `receive` will see as EOF.
    let _ = stream.shutdown(Shutdown::Write);
    receive(&mut stream, &mut stdout, Some(DRAIN_QUIET), DRAIN_QUIET)?;
    Ok(())
}
// ANCHOR_END: lock_step

/// Shows the prompt and waits until a line is typed (or Ctrl-D), watching the socket meanwhile:
/// what the server sends unasked is printed on lines of its own, and a server that closes the
/// connection is reported at once rather than when the next line fails to reach it.
fn prompt(stream: &mut TcpStream, out: &mut impl Write) -> anyhow::Result<()> {
    show(out, PROMPT)?;
    loop {
        // A terminal's stdin turns readable when a whole line is typed, not at each key.
        let [server, user] = readable([stream.as_fd(), io::stdin().as_fd()], None)?;
        if server {
            show(out, b"\n")?;
            if let Some(why) = receive(stream, out, Some(LINE_QUIET), LINE_QUIET)?.gone {
                return Err(why);
            }
            show(out, PROMPT)?;
        }
        if user {
            return Ok(());
        }
    }
}

/// Waits for the reply to a line just sent. If it is slow to come, says once what the wait is,
/// so that a student sees the lesson (the server is busy elsewhere) rather than a hang.
fn wait_for_reply(stream: &mut TcpStream, out: &mut impl Write) -> anyhow::Result<Reply> {
    let reply = receive(stream, out, Some(NO_REPLY_HINT), LINE_QUIET)?;
    if reply.bytes > 0 || reply.gone.is_some() {
        return Ok(reply);
    }
    if io::stderr().is_terminal() {
        eprintln!("\x1b[2m{NO_REPLY}\x1b[0m"); // dim: a remark, not part of the conversation
    } else {
        eprintln!("{NO_REPLY}");
    }
    receive(stream, out, None, LINE_QUIET)
}

/// Reads the next line from stdin, newline-terminated and ready to send; None at EOF.
fn next_line(stdin: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if stdin.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        line.push(b'\n');
    }
    Ok(Some(line))
}

/// What `receive` saw: how many bytes, and whether the server is gone (and what to say).
struct Reply {
    bytes: usize,
    gone: Option<anyhow::Error>,
}

/// Writes bytes to the terminal (or pipe) as they are, not-UTF-8 included, and flushes them.
fn show(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

/// A failed send or receive: the server is gone, and this says so.
fn gone(err: io::Error) -> anyhow::Error {
    anyhow!("{SERVER_CLOSED} ({err})")
}

// ANCHOR: receive
/// Copies what the server sends to `out`, raw, until it pauses: waits `first` for the first
/// byte (None: forever), then `quiet` once a newline is in, or PARTIAL_QUIET while none is.
fn receive(
    stream: &mut TcpStream,
    out: &mut impl Write,
    first: Option<Duration>,
    quiet: Duration,
) -> anyhow::Result<Reply> {
    let mut buf = vec![0; BUF_SIZE];
    let (mut bytes, mut has_newline, mut last) = (0, false, b'\n');
    stream.set_read_timeout(first)?;
    let gone = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Some(anyhow!(SERVER_CLOSED)),
            Ok(n) => {
                show(out, &buf[..n])?;
                bytes += n;
                has_newline |= buf[..n].contains(&b'\n');
                last = buf[n - 1];
            }
            // The timeout ran out with nothing new: the reply is over (not an error).
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break None;
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            // A reset: the server is gone as surely as with EOF.
            Err(err) => break Some(gone(err)),
        }
        let wait = if has_newline { quiet } else { PARTIAL_QUIET };
        stream.set_read_timeout(Some(wait))?;
    };
    if last != b'\n' {
        show(out, b"\n")?;
    }
    Ok(Reply { bytes, gone })
}
// ANCHOR_END: receive

/// Waits until each descriptor can be read without blocking (or is at EOF), or `timeout`
/// passes: which of them can.
fn readable(fds: [BorrowedFd; 2], timeout: Option<Duration>) -> anyhow::Result<[bool; 2]> {
    let timeout = match timeout {
        Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
        None => PollTimeout::NONE,
    };
    let mut polled = fds.map(|fd| PollFd::new(fd, PollFlags::POLLIN));
    loop {
        match poll(&mut polled, timeout) {
            Ok(_) => return Ok(polled.map(|fd| fd.any().unwrap_or(false))),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err).context("poll"),
        }
    }
}
