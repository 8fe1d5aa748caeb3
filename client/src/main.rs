//! # client: the one client every chapter's server talks to
//!
//! The lecture's client loop, made sturdy: prompt `>>: `, read a line, send it with a newline,
//! wait for the reply, print it; Ctrl-D ends it. It talks to every server in this workspace and
//! to servers nobody here wrote (a Python socket server, `nc -l 8080`).
//!
//! Run it beside a server:
//!
//! ```text
//! cargo run -p select                              # terminal 1
//! cargo run -p client                              # terminal 2 (and 3, 4 ...)
//! printf 'hello\nworld\n' | cargo run -p client    # no prompt: prints HELLO, then WORLD
//! ```
//!
//! A reply is whatever comes back after a line is sent. The client waits as long as it takes for
//! its first byte (a person behind `nc -l` may be typing it), prints bytes as they arrive, and
//! moves on once a whole line is in and 50 ms pass with nothing more, or after 1 s of quiet if no
//! newline ever comes, so a server that answers without a newline cannot hang it. A reply that
//! does not end a line gets a newline, so each reply sits on its own line. At the end of input
//! it half-closes and prints what the server still sends, until it closes or is quiet for 1 s.
//!
//! `--follow` is for the chat chapter (`cargo run -p selectors-chat`, then
//! `cargo run -p client -- --follow` in two terminals): one thread reads the socket, another reads
//! your lines, and the main thread waits on both with `crossbeam_channel::select!`, so what others
//! say prints while you type. No prompt there, and no waiting for replies.

use std::io::{self, BufRead, ErrorKind, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use crossbeam_channel::{Sender, bounded, select};

/// Bytes read per `read` call.
const BUF_SIZE: usize = 4096;
/// Messages each channel holds before its thread waits (follow mode).
const CHANNEL_CAP: usize = 16;
/// How long to wait for a server to accept us.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A reply is over once a whole line is in and nothing more came for this long ...
const LINE_QUIET: Duration = Duration::from_millis(50);
/// ... or once this long passed with nothing new and still no newline.
const PARTIAL_QUIET: Duration = Duration::from_secs(1);
/// After our EOF, how long a silent server gets before we stop listening to it.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

const PROMPT: &[u8] = b">>: ";
const SERVER_CLOSED: &str = "the server closed the connection";

/// The interactive client for every server here: type a line, see the reply (Ctrl-D quits).
/// Pipe lines in to script it; --follow prints what the server says as it arrives (for the chat).
#[derive(Parser)]
#[command(verbatim_doc_comment)]
#[command(name = "client")]
struct Args {
    /// The server's address, HOST:PORT.
    #[arg(default_value = support::DEFAULT_ADDR)]
    addr: String,

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
    let stream = connect(&args.addr)?;
    if args.follow {
        follow(stream)
    } else {
        lock_step(stream)
    }
}

/// Connects within a second, or says in one line what to do about it.
fn connect(addr: &str) -> anyhow::Result<TcpStream> {
    let candidates: Vec<SocketAddr> = match addr.to_socket_addrs() {
        Ok(found) => found.collect(),
        Err(_) if !addr.contains(':') => {
            bail!("'{addr}' is not a HOST:PORT address, e.g. 127.0.0.1:8080")
        }
        Err(err) => bail!("cannot resolve {addr}: {err}"),
    };
    // `localhost` may name ::1 and 127.0.0.1; our servers bind only the second. Try each.
    let mut last_err = io::Error::new(ErrorKind::NotFound, "the name has no address");
    let mut tried = None;
    for candidate in candidates {
        tried = Some(candidate);
        match TcpStream::connect_timeout(&candidate, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(err) => last_err = err,
        }
    }
    // The servers take an IP:PORT, not a name: suggest the address we actually tried.
    let start = match tried {
        Some(ip) if addr != support::DEFAULT_ADDR => format!("cargo run -p select -- {ip}"),
        _ => "cargo run -p select".to_owned(),
    };
    match last_err.kind() {
        ErrorKind::ConnectionRefused => {
            bail!("nothing is listening on {addr}; start a server first, e.g. `{start}`")
        }
        ErrorKind::TimedOut => bail!("no answer from {addr} within 1 s; is a server there?"),
        _ => Err(last_err).with_context(|| format!("cannot connect to {addr}")),
    }
}

// ANCHOR: lock_step
/// The lecture's loop: one line out, one reply back, then the next line.
fn lock_step(mut stream: TcpStream) -> anyhow::Result<()> {
    let terminal = io::stdin().is_terminal();
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout();
    // The line is sent from a second thread while this one prints the reply. An echo server
    // answers while it still reads, and stops reading while its answer waits for us: had we
    // sent all of a line longer than the socket buffers before reading, each side would wait
    // for the other forever.
    let mut sender = stream.try_clone().context("clone the socket")?;
    // The server hung up right after a reply: an error only if we still have something to say.
    let mut hung_up = None;
    while let Some(line) = next_line(&mut stdin, terminal).context("read stdin")? {
        if let Some(why) = hung_up {
            return Err(why);
        }
        let (sent, reply) = thread::scope(|scope| {
            let sending = scope.spawn(|| sender.write_all(&line));
            let reply = receive(&mut stream, &mut stdout, None, LINE_QUIET);
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
        let reply = reply?;
        match reply.gone {
            // No answer to the line we sent, or a person about to type into a dead connection.
            Some(why) if reply.bytes == 0 || terminal => return Err(why),
            gone => hung_up = gone,
        }
    }
    if terminal {
        writeln!(stdout)?; // after Ctrl-D, so the shell's prompt starts on its own line
    }
    if hung_up.is_none() {
        // Half-close: the server reads EOF, sends what it still owes us, and closes. If this
        // fails the connection is already gone, which `receive` will see as EOF.
        let _ = stream.shutdown(Shutdown::Write);
        receive(&mut stream, &mut stdout, Some(DRAIN_QUIET), DRAIN_QUIET)?;
    }
    Ok(())
}
// ANCHOR_END: lock_step

/// Reads the next non-empty line from stdin, newline-terminated and ready to send; None at EOF.
/// With `prompt`, shows `>>: ` before every read, as the lecture's `input('>>: ')` does.
fn next_line(stdin: &mut impl BufRead, prompt: bool) -> io::Result<Option<Vec<u8>>> {
    loop {
        if prompt {
            show(&mut io::stdout(), PROMPT)?;
        }
        let mut line = Vec::new();
        if stdin.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        // Empty lines are skipped, as in the lecture: there would be nothing to echo.
        if !line.is_empty() {
            line.push(b'\n');
            return Ok(Some(line));
        }
    }
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
    let mut buf = [0; BUF_SIZE];
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

// ANCHOR: follow
/// Follow mode: print the server's bytes as they arrive, send lines as they are typed.
fn follow(stream: TcpStream) -> anyhow::Result<()> {
    // Bounded both ways: if stdout stalls, the reader thread waits, stops reading the socket,
    // and the server's back-pressure takes over; a fast stdin waits for the socket likewise.
    let (net_tx, net) = bounded::<io::Result<Vec<u8>>>(CHANNEL_CAP);
    let (line_tx, lines) = bounded::<Vec<u8>>(CHANNEL_CAP);
    let reader = stream.try_clone().context("clone the socket")?;
    thread::spawn(move || read_socket(reader, net_tx));
    thread::spawn(move || read_stdin(line_tx));

    let mut stdout = io::stdout();
    let mut writer = &stream;
    loop {
        select! {
            recv(net) -> msg => match msg {
                Ok(Ok(bytes)) => show(&mut stdout, &bytes)?,
                Ok(Err(err)) => return Err(gone(err)),
                // The reader thread saw EOF and dropped its end: the server ended the session
                // (in the chat, `/quit` does that). Say so; it is no failure of ours.
                Err(_) => {
                    eprintln!("client: {SERVER_CLOSED}");
                    return Ok(());
                }
            },
            recv(lines) -> line => match line {
                Ok(line) => writer.write_all(&line).map_err(gone)?,
                // The stdin thread saw EOF and dropped its end: we have nothing more to say.
                Err(_) => break,
            },
        }
    }
    // Half-close, then print what still comes until the server closes or falls quiet.
    let _ = stream.shutdown(Shutdown::Write);
    while let Ok(Ok(bytes)) = net.recv_timeout(DRAIN_QUIET) {
        show(&mut stdout, &bytes)?;
    }
    Ok(())
}

/// The reader thread: socket → channel. Dropping `tx` at EOF is how it says "closed".
fn read_socket(mut stream: TcpStream, tx: Sender<io::Result<Vec<u8>>>) {
    let mut buf = [0; BUF_SIZE];
    loop {
        let msg = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => Err(err),
        };
        let failed = msg.is_err();
        if tx.send(msg).is_err() || failed {
            return;
        }
    }
}

/// The stdin thread: lines → channel. Dropping `tx` at EOF is how it says "no more input".
fn read_stdin(tx: Sender<Vec<u8>>) {
    let mut stdin = io::stdin().lock();
    // A read error on stdin ends the input just as EOF does.
    while let Ok(Some(line)) = next_line(&mut stdin, false) {
        if tx.send(line).is_err() {
            return;
        }
    }
}
// ANCHOR_END: follow
