//! In a pipe (and `--follow` in a pipe): full duplex. Nobody waits to read each reply before
//! typing the next line, so the client does not take turns either.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{BUF_SIZE, DRAIN_QUIET, SERVER_CLOSED, gone, show};

/// After our EOF, how long a server that has not yet sent back as many bytes as it was sent
/// may be quiet before we stop listening to it (DRAIN_QUIET for any other).
const SLOW_QUIET: Duration = Duration::from_secs(3);

// ANCHOR: pipe
/// From a pipe (and `--follow` from a pipe): full duplex. A second thread sends stdin as fast
/// as the server takes it and half-closes at its end; this one prints what arrives meanwhile,
/// until the server closes, or falls quiet after our input ended.
pub fn pipe(stream: TcpStream, follow: bool) -> anyhow::Result<()> {
    let sender = stream.try_clone().context("clone the socket")?;
    let server_closed = Arc::new(AtomicBool::new(false));
    let (ended_tx, ended) = mpsc::channel();
    let told = Arc::clone(&server_closed);
    // Not joined: at our end it may still wait for a stdin that never ends, and exit ends it.
    thread::spawn(move || {
        let result = send_stdin(sender, &told);
        let _ = ended_tx.send((result, Instant::now()));
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
                input_ended = input_ended.or_else(|| ended.try_recv().ok());
                match &input_ended {
                    None => {} // still sending
                    Some((Err(_), _)) => break false,
                    // Nothing back yet for what we sent: the server may not have read us at all
                    // (the blocking chapter's queued client). Wait as long as it takes, as a
                    // terminal does. (Sent nothing, owed nothing: on to the quiet timeout.)
                    Some((Ok(sent), _)) if received == 0 && *sent > 0 => {}
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
        .unwrap_or_else(|| ended.recv_timeout(DRAIN_QUIET))
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
