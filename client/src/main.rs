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
//! From a pipe there is nobody to take turns with: one thread sends stdin as fast as the server
//! takes it while the main thread prints what comes back, so megabytes stream through in a
//! second. At the end of input it half-closes and prints what the server still sends, until it
//! closes or is quiet for 1 s.
//!
//! `--follow` is for the chat chapter (`cargo run -p selectors-chat`, then
//! `cargo run -p client -- --follow` in two terminals): what others say is printed the moment it
//! arrives, above the line you are typing, which is then drawn again. No prompt there, and no
//! waiting for replies.

use std::io::{self, BufRead, ErrorKind, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

/// Bytes read per `read` call.
const BUF_SIZE: usize = 64 * 1024;
/// How long to wait for a server to accept us.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A reply is over once a whole line is in and nothing more came for this long ...
const LINE_QUIET: Duration = Duration::from_millis(50);
/// ... or once this long passed with nothing new and still no newline.
const PARTIAL_QUIET: Duration = Duration::from_secs(1);
/// After our EOF, how long a silent server gets before we stop listening to it ...
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// ... or, in a pipe, one that has not yet sent back as many bytes as it was sent.
const SLOW_QUIET: Duration = Duration::from_secs(3);
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
        (true, true) if io::stdout().is_terminal() => follow(stream),
        (follow, _) => pipe(stream, follow),
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

// ANCHOR: pipe
/// From a pipe (and `--follow` from a pipe): full duplex. A second thread sends stdin as fast
/// as the server takes it and half-closes at its end; this one prints what arrives meanwhile,
/// until the server closes, or falls quiet for DRAIN_QUIET after our input ended.
fn pipe(stream: TcpStream, follow: bool) -> anyhow::Result<()> {
    let sender = stream.try_clone().context("clone the socket")?;
    let server_closed = Arc::new(AtomicBool::new(false));
    let (sent_tx, sent) = mpsc::channel();
    let closed = Arc::clone(&server_closed);
    // Not joined: at our end it may still wait for a stdin that never ends, and exit ends it.
    thread::spawn(move || {
        let result = send_stdin(sender, &closed);
        let _ = sent_tx.send((result, Instant::now()));
    });

    let mut stdout = io::stdout().lock();
    let mut buf = vec![0; BUF_SIZE];
    let (mut received, mut last, mut last_at) = (0, b'\n', Instant::now());
    let mut input_ended = None;
    stream.set_read_timeout(Some(DRAIN_QUIET))?;
    let closed = loop {
        match (&stream).read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                show(&mut stdout, &buf[..n])?;
                (received, last, last_at) = (received + n, buf[n - 1], Instant::now());
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                input_ended = input_ended.or_else(|| sent.try_recv().ok());
                match &input_ended {
                    None => {} // still sending
                    Some((Err(_), _)) => break false,
                    // Nothing back yet: the server may not have read us at all (the blocking
                    // chapter's queued client). Wait as long as it takes, as a terminal does.
                    Some(_) if received == 0 => {}
                    // Then stop once it has been quiet since our end for DRAIN_QUIET, or for
                    // SLOW_QUIET while it owes bytes (an echo answers byte for byte, perhaps
                    // after a pause: the nonblocking chapter's --sleep-ms).
                    Some((Ok(sent), ended_at)) => {
                        let patience = if received < *sent {
                            SLOW_QUIET
                        } else {
                            DRAIN_QUIET
                        };
                        match patience.checked_sub(last_at.max(*ended_at).elapsed()) {
                            Some(left) if !left.is_zero() => stream.set_read_timeout(Some(left))?,
                            _ => break false,
                        }
                    }
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(gone(err)),
        }
    };
    if last != b'\n' {
        show(&mut stdout, b"\n")?; // the last reply on a line of its own
    }
    if !closed {
        let (result, _) = input_ended.expect("the input ended");
        return result.map(drop);
    }
    // The server closed. Did it hear all we had to say? Give our input a moment to end.
    server_closed.store(true, Ordering::SeqCst);
    match input_ended
        .map(Ok)
        .unwrap_or_else(|| sent.recv_timeout(DRAIN_QUIET))
    {
        Ok((Ok(bytes), _)) if bytes > 0 && received == 0 => {
            bail!("{SERVER_CLOSED} without answering")
        }
        Ok((result, _)) => result.map(|_| ()),
        // Our input has not ended: the chat's /quit ends a session, anything else is a failure.
        Err(_) if follow => {
            eprintln!("client: {SERVER_CLOSED}");
            Ok(())
        }
        Err(_) => bail!("{SERVER_CLOSED} before the end of the input"),
    }
}

/// The sending thread: stdin to the socket, as fast as the socket takes it, then half-close.
/// Drops empty lines and ends an unfinished last line, as the terminal loop does. Returns the
/// number of bytes sent.
fn send_stdin(mut socket: TcpStream, server_closed: &AtomicBool) -> anyhow::Result<usize> {
    let mut stdin = io::stdin().lock();
    let (mut buf, mut unsent) = (vec![0; BUF_SIZE], Vec::with_capacity(2 * BUF_SIZE));
    let (mut sent, mut line_start) = (0, true);
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("read stdin"),
        };
        if server_closed.load(Ordering::SeqCst) {
            bail!("{SERVER_CLOSED} before the end of the input");
        }
        for &byte in &buf[..n] {
            if !(byte == b'\n' && line_start) {
                unsent.push(byte);
            }
            line_start = byte == b'\n';
        }
        // Whole lines, in one write each time, as a terminal gives them: what the server reads
        // then does not depend on the pieces the pipe came in. A line too long to wait for
        // goes in pieces.
        let whole = match unsent.iter().rposition(|&b| b == b'\n') {
            _ if unsent.len() >= BUF_SIZE => unsent.len(),
            Some(end) => end + 1,
            None => 0,
        };
        socket.write_all(&unsent[..whole]).map_err(gone)?;
        sent += whole;
        unsent.drain(..whole);
    }
    if !line_start {
        unsent.push(b'\n');
    }
    socket.write_all(&unsent).map_err(gone)?;
    sent += unsent.len();
    // If this fails the connection is gone, and the reading side sees it.
    let _ = socket.shutdown(Shutdown::Write);
    Ok(sent)
}
// ANCHOR_END: pipe

// ANCHOR: follow
/// Follow mode on a terminal: one thread, waiting in `poll` on the socket and the keyboard.
/// The client draws the line being typed itself (the terminal's own echo is off), so a line
/// from the server goes above it: erase the typed line, print the server's, draw ours again.
fn follow(mut stream: TcpStream) -> anyhow::Result<()> {
    let raw = RawMode::enter()?;
    let mut out = io::stdout().lock();
    let mut typed = Typed::default();
    let mut held = Vec::new(); // what the server sent after its last newline
    let mut buf = vec![0; BUF_SIZE];
    'session: loop {
        // A line that lacks its end is shown anyway once the server is quiet for a while.
        let timeout = (!held.is_empty()).then_some(PARTIAL_QUIET);
        let [server, user] = readable([stream.as_fd(), io::stdin().as_fd()], timeout)?;
        if !server && !user {
            held.push(b'\n');
        }
        if server {
            let n = match (&stream).read(&mut buf) {
                Ok(n) => n,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(gone(err)),
            };
            if n == 0 {
                // The server ended the session (the chat's /quit does that): no failure of ours.
                if !held.is_empty() {
                    held.push(b'\n');
                }
                above(&mut out, &held, columns(&typed.line), b"")?;
                drop(raw);
                eprintln!("client: {SERVER_CLOSED}");
                return Ok(());
            }
            held.extend_from_slice(&buf[..n]);
        }
        if let Some(end) = held.iter().rposition(|&b| b == b'\n') {
            let lines: Vec<u8> = held.drain(..=end).collect();
            let drawn = columns(&typed.line);
            above(&mut out, &lines, drawn, &typed.line)?;
        }
        if user {
            let n = io::stdin().lock().read(&mut buf).context("read stdin")?;
            if n == 0 {
                break; // the terminal is gone
            }
            for &key in &buf[..n] {
                let drawn = columns(&typed.line);
                match typed.key(key) {
                    Edit::Nothing => {}
                    Edit::Echo => show(&mut out, &[key])?,
                    Edit::Redraw => above(&mut out, b"", drawn, &typed.line)?,
                    Edit::Enter(mut line) => {
                        show(&mut out, b"\n")?;
                        if !line.is_empty() {
                            line.push(b'\n');
                            (&stream).write_all(&line).map_err(gone)?;
                        }
                    }
                    Edit::End => break 'session,
                    Edit::Quit => return Ok(show(&mut out, b"^C\n")?),
                }
            }
        }
    }
    // Ctrl-D: half-close, then print what still comes until the server closes or falls quiet.
    drop(raw);
    let _ = stream.shutdown(Shutdown::Write);
    show(&mut out, &held)?;
    receive(&mut stream, &mut out, Some(DRAIN_QUIET), DRAIN_QUIET)?;
    Ok(())
}

/// Prints `lines` where the typed line is (`drawn` columns of it on the screen), then draws
/// `typed` below them.
fn above(out: &mut impl Write, lines: &[u8], drawn: usize, typed: &[u8]) -> io::Result<()> {
    // Back to where the typed line starts, rows up if it wrapped (\r, then ESC [ n A), and
    // erase from there to the end of the screen (ESC [ J).
    let mut bytes = b"\r".to_vec();
    let rows_up = drawn.saturating_sub(1) / terminal_width();
    if rows_up > 0 {
        bytes.extend_from_slice(format!("\x1b[{rows_up}A").as_bytes());
    }
    bytes.extend_from_slice(b"\x1b[J");
    show(out, &[&bytes[..], lines, typed].concat())
}
// ANCHOR_END: follow

/// The terminal's width in columns (80 if it does not say).
fn terminal_width() -> usize {
    let mut size = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `size`, which outlives the call.
    let got =
        unsafe { nix::libc::ioctl(io::stdout().as_raw_fd(), nix::libc::TIOCGWINSZ, &mut size) };
    if got == 0 && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

/// How many columns a terminal gives `text`: two for each character of the East Asian wide
/// ranges (汉字, かな, 한글, fullwidth forms, emoji), one for any other.
fn columns(text: &[u8]) -> usize {
    let width = |c: char| match u32::from(c) {
        0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF => 2,
        0x4E00..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF => 2,
        0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x1F300..=0x1F64F => 2,
        0x1F900..=0x1F9FF | 0x20000..=0x3FFFD => 2,
        _ => 1,
    };
    String::from_utf8_lossy(text).chars().map(width).sum()
}

/// The line being typed in follow mode, and what each key does to it.
#[derive(Default)]
struct Typed {
    line: Vec<u8>,
    /// In an escape sequence (an arrow key, say): 1 after ESC, 2 after ESC [ or ESC O.
    escape: u8,
}

/// What a key did, for the screen to show.
enum Edit {
    Nothing,
    /// The key was added to the line: print it.
    Echo,
    /// The line lost characters: draw it again.
    Redraw,
    /// Enter: the line, to send.
    Enter(Vec<u8>),
    /// Ctrl-D on an empty line: no more input.
    End,
    /// Ctrl-C (a key here, not a signal, so that the terminal is always restored).
    Quit,
}

impl Typed {
    fn key(&mut self, key: u8) -> Edit {
        match (self.escape, key) {
            // No cursor movement here: skip escape sequences whole.
            (1, b'[' | b'O') => self.escape = 2,
            (2, 0x20..=0x3f) => {} // the sequence's parameters
            (1 | 2, _) => self.escape = 0,
            (_, 0x1b) => self.escape = 1,
            (_, b'\r' | b'\n') => return Edit::Enter(std::mem::take(&mut self.line)),
            // Backspace: one character, however many bytes of UTF-8 it takes.
            (_, 0x7f | 0x08) => {
                while let Some(byte) = self.line.pop() {
                    if byte & 0xc0 != 0x80 {
                        break;
                    }
                }
                return Edit::Redraw;
            }
            // Ctrl-U: erase the line; Ctrl-W: erase the last word.
            (_, 0x15) => {
                self.line.clear();
                return Edit::Redraw;
            }
            (_, 0x17) => {
                let end = self
                    .line
                    .iter()
                    .rposition(|&b| b != b' ')
                    .map_or(0, |i| i + 1);
                let start = self.line[..end].iter().rposition(|&b| b == b' ');
                self.line.truncate(start.map_or(0, |i| i + 1));
                return Edit::Redraw;
            }
            (_, 0x04) if self.line.is_empty() => return Edit::End,
            (_, 0x03) => return Edit::Quit,
            (_, 0x00..=0x1f) => {} // other control keys do nothing
            _ => {
                self.line.push(key);
                return Edit::Echo;
            }
        }
        Edit::Nothing
    }
}

/// The terminal in non-canonical mode, without echo or signal keys, for as long as this lives:
/// keys arrive one at a time and the client shows them itself. Dropping it restores the terminal.
struct RawMode(Termios);

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        let saved = termios::tcgetattr(io::stdin()).context("tcgetattr")?;
        let mut raw = saved.clone();
        raw.local_flags
            .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::IEXTEN);
        raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        termios::tcsetattr(io::stdin(), SetArg::TCSANOW, &raw).context("tcsetattr")?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin(), SetArg::TCSANOW, &self.0);
    }
}
