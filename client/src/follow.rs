//! `--follow` on a terminal (the chat chapter): what the server sends is printed the moment it
//! arrives, above the line being typed, which the client draws itself.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd};

use anyhow::Context;
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

use crate::{BUF_SIZE, DRAIN_QUIET, PARTIAL_QUIET, SERVER_CLOSED, gone, readable, receive, show};

// ANCHOR: follow
/// Follow mode on a terminal: one thread, waiting in `poll` on the socket and the keyboard.
/// The client draws the line being typed itself (the terminal's own echo is off), so a line
/// from the server goes above it: erase the typed line, print the server's, draw ours again.
pub fn follow(mut stream: TcpStream) -> anyhow::Result<()> {
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
                above(&mut out, &held, rows_up(&typed.line, terminal_width()), b"")?;
                drop(raw);
                eprintln!("client: {SERVER_CLOSED}");
                return Ok(());
            }
            held.extend_from_slice(&buf[..n]);
        }
        if let Some(end) = held.iter().rposition(|&b| b == b'\n') {
            let lines: Vec<u8> = held.drain(..=end).collect();
            above(
                &mut out,
                &lines,
                rows_up(&typed.line, terminal_width()),
                &typed.line,
            )?;
        }
        if user {
            let n = io::stdin().lock().read(&mut buf).context("read stdin")?;
            if n == 0 {
                break; // the terminal is gone
            }
            for &key in &buf[..n] {
                let drawn = rows_up(&typed.line, terminal_width());
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

/// Prints `lines` where the typed line is (it wrapped onto `rows_up` more rows), then draws
/// `typed` below them.
fn above(out: &mut impl Write, lines: &[u8], rows_up: usize, typed: &[u8]) -> io::Result<()> {
    // Back to where the typed line starts, rows up if it wrapped (\r, then ESC [ n A), and
    // erase from there to the end of the screen (ESC [ J).
    let mut bytes = b"\r".to_vec();
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

/// How many rows below its first the cursor is after a terminal `width` columns wide has drawn
/// `text` from the start of a row. A wide character (汉字, かな, 한글, fullwidth forms, emoji: two columns)
/// that does not fit in the last column goes whole to the next row, leaving that column empty;
/// a row filled exactly leaves the cursor on it until the next character.
fn rows_up(text: &[u8], width: usize) -> usize {
    let columns = |c: char| match u32::from(c) {
        0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF => 2,
        0x4E00..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF => 2,
        0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x1F300..=0x1F64F => 2,
        0x1F900..=0x1F9FF | 0x20000..=0x3FFFD => 2,
        _ => 1,
    };
    let (mut row, mut column) = (0, 0);
    for c in String::from_utf8_lossy(text).chars() {
        if column + columns(c) > width {
            (row, column) = (row + 1, 0);
        }
        column += columns(c);
    }
    row
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

#[cfg(test)]
mod tests {
    use super::rows_up;

    #[test]
    fn wide_characters_wrap_whole() {
        assert_eq!(rows_up(b"", 21), 0);
        assert_eq!(
            rows_up("x".repeat(21).as_bytes(), 21),
            0,
            "a full row keeps the cursor"
        );
        assert_eq!(rows_up("x".repeat(22).as_bytes(), 21), 1);
        // 21 columns hold 10 of them, not 10 and a half: 21 of them take three rows, not two.
        assert_eq!(rows_up("汉".repeat(10).as_bytes(), 21), 0);
        assert_eq!(rows_up("汉".repeat(21).as_bytes(), 21), 2);
        assert_eq!(rows_up("x汉汉".as_bytes(), 4), 1);
    }
}
