//! The chat room (the default): the lecture's "chat" on selectors, made into a real one.
//!
//! Line-based. Every line a client sends goes to everyone, the sender included, as
//! `NAME: TEXT`: UTF-8 text as it was, but control characters shown as `cat -v` shows them
//! (`^[` for ESC), so that nobody can clear the others' screens or retitle their terminals.
//! `/nick NAME`, `/who` and `/quit` are commands; notices start with `* `, errors with `! `.
//!
//! The lesson is the broadcast: one line in, one copy queued in every member's output buffer,
//! each written when *its* socket can take it. A member who stops reading only fills its own
//! buffer; at MAX_OUT it is cut off and the room goes on. Nothing ever waits for a slow reader.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use anyhow::Context;
use support::{Counter, STATS, count, trace};

use crate::selector::{Events, Selector};
use crate::{BUF_SIZE, flush, handle_new_connection, refuse};

/// The longest line a client may send, in bytes, without its line ending.
const MAX_LINE: usize = 4096;
/// Output a member may have pending before it is cut off: it has stopped reading.
const MAX_OUT: usize = 1024 * 1024;
/// Back-pressure: stop reading a member's lines while this much of its own output is unsent.
const MAX_PENDING: usize = 64 * 1024;
/// A name: 1 to 32 of these characters.
const MAX_NAME: usize = 32;

/// Lines relayed to the room.
static RELAYED: Counter = Counter::new();
/// Members cut off for not reading.
static CUT_OFF: Counter = Counter::new();

/// As in the echo: each registration's data is the function to call.
pub type Callback = fn(&mut Chat, RawFd, Events);

pub struct Chat {
    sel: Selector<Callback>,
    listener: TcpListener,
    clients: HashMap<RawFd, Client>,
    spare: Option<File>,
    buf: [u8; BUF_SIZE],
    /// The next `guest-N` to hand out.
    next_guest: u64,
    /// Clients whose output or state changed in this pass: settle() writes, re-arms or closes
    /// each once, after every callback of the pass has run.
    touched: HashSet<RawFd>,
}

struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    name: String,
    /// Bytes of an unfinished line (at most MAX_LINE + 1, or the client is closed).
    line: Vec<u8>,
    /// Bytes queued for this client (at most MAX_OUT, or it is cut off).
    out: Vec<u8>,
    /// EOF, /quit or a line too long: read no more, receive no more, close once `out` is sent.
    leaving: bool,
    /// A read or write failed, or it was cut off: close now.
    broken: bool,
    cut_off: bool,
}

impl Client {
    fn new(stream: TcpStream, peer: SocketAddr, name: String) -> Client {
        Client {
            stream,
            peer,
            name,
            line: Vec::new(),
            out: Vec::new(),
            leaving: false,
            broken: false,
            cut_off: false,
        }
    }
    fn in_room(&self) -> bool {
        !self.leaving && !self.broken
    }
    fn wants_read(&self) -> bool {
        self.in_room() && self.out.len() < MAX_PENDING
    }
    fn wants_write(&self) -> bool {
        !self.broken && !self.out.is_empty()
    }
    fn finished(&self) -> bool {
        self.broken || (self.leaving && self.out.is_empty())
    }
    fn fail(&mut self, err: io::Error) {
        trace!("{} ({}): {err}; closing", self.peer, self.name);
        self.broken = true;
    }
    fn wanted(&self) -> Events {
        let mut events = Events::NONE;
        if self.wants_read() {
            events = events | Events::READ;
        }
        if self.wants_write() {
            events = events | Events::WRITE;
        }
        events
    }
    /// Queues bytes for this client; past MAX_OUT it has stopped reading, and is cut off
    /// (its backlog freed at once) rather than let it grow the server without bound.
    fn send(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        if self.out.len() + bytes.len() > MAX_OUT {
            trace!(
                "{} ({}): {} bytes unread; cutting off",
                self.peer,
                self.name,
                self.out.len()
            );
            CUT_OFF.add(1);
            self.cut_off = true;
            self.broken = true;
            self.out = Vec::new();
            return;
        }
        self.out.extend_from_slice(bytes);
    }
}

/// Runs the room until Ctrl-C; returns this mode's counters for the summary.
pub fn run(listener: TcpListener, sel: Selector<Callback>) -> anyhow::Result<Vec<String>> {
    let mut chat = Chat {
        sel,
        listener,
        clients: HashMap::new(),
        spare: support::reserve_descriptor(),
        buf: [0; BUF_SIZE],
        next_guest: 1,
        touched: HashSet::new(),
    };
    chat.sel
        .register(&chat.listener, Events::READ, accept)
        .context("register the listener")?;

    while !support::stop_requested() {
        // Phase 1: wait.
        let ready = chat.sel.select(None).context("select")?;
        STATS.wakeups.add(1);
        let kind = chat.sel.kind().name();
        trace!(
            "{kind}: {} ready of {} watched",
            ready.len(),
            chat.sel.len()
        );

        // Phases 2 and 3: call each ready key's function: accept, or serve (read and write).
        // They only queue output and mark clients; nobody is closed while others still run.
        for (key, events) in ready {
            let callback = key.data;
            callback(&mut chat, key.fd, events);
        }

        // Phase 4: write what was queued, ask for what each client needs now, close.
        chat.settle();
    }
    Ok(vec![
        count(RELAYED.get(), "message", "messages") + " relayed",
        count(CUT_OFF.get(), "client", "clients") + " cut off",
    ])
}

/// The listener's callback: accept everyone waiting, welcome each, tell the room.
fn accept(chat: &mut Chat, _fd: RawFd, _events: Events) {
    for (stream, peer) in handle_new_connection(&chat.listener, &mut chat.spare) {
        if let Err(e) = chat.sel.register(&stream, Events::READ, serve) {
            refuse(peer, e);
            continue;
        }
        // guest-N, skipping any N someone has taken with /nick.
        let name = loop {
            let name = format!("guest-{}", chat.next_guest);
            chat.next_guest += 1;
            if !chat.name_taken(&name, None) {
                break name;
            }
        };
        let n = count(chat.clients.len() as u64 + 1, "client", "clients");
        trace!("{peer}: connected as {name} ({n})");
        chat.broadcast(format!("* {name} joined\n").as_bytes());
        let fd = stream.as_raw_fd();
        let mut client = Client::new(stream, peer, name);
        client.send(
            format!(
                "* welcome, you are {}; commands: /nick NAME, /who, /quit\n",
                client.name
            )
            .as_bytes(),
        );
        chat.clients.insert(fd, client);
        chat.touched.insert(fd);
    }
}

/// A client's callback: read its lines and act on them; write if it is writable.
fn serve(chat: &mut Chat, fd: RawFd, events: Events) {
    let Some(client) = chat.clients.get_mut(&fd) else {
        return;
    };
    chat.touched.insert(fd);
    if events.contains(Events::WRITE) {
        if let Err(e) = flush(&mut client.stream, &mut client.out) {
            client.fail(e);
        }
    }
    if !events.contains(Events::READ) || !client.wants_read() {
        return;
    }
    STATS.calls.add(1);
    let n = match client.stream.read(&mut chat.buf) {
        // EOF: the client has left. Send what we owe, then close.
        Ok(0) => {
            client.leaving = true;
            return;
        }
        Ok(n) => n,
        Err(e) if support::would_block(&e) => {
            STATS.would_block.add(1);
            return;
        }
        Err(e) if support::interrupted(&e) => return,
        Err(e) => {
            client.fail(e);
            return;
        }
    };
    STATS.bytes_in.add(n as u64);
    // Split off the complete lines; keep the unfinished rest for the next read.
    client.line.extend_from_slice(&chat.buf[..n]);
    let mut lines = Vec::new();
    while let Some(end) = client.line.iter().position(|&b| b == b'\n') {
        lines.push(client.line.drain(..=end).collect::<Vec<u8>>());
    }
    // An unfinished line already too long (one byte of slack for a '\r') can only end too long.
    let overflow = client.line.len() > MAX_LINE + 1;
    for line in lines {
        chat.handle_line(fd, &line);
    }
    if overflow {
        chat.too_long(fd);
    }
}

impl Chat {
    /// One line from `fd`: a command, or a message for everyone.
    fn handle_line(&mut self, fd: RawFd, line: &[u8]) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        if !client.in_room() {
            return; // it already left; what it sent after /quit is dropped
        }
        // `\r\n` and `\n` both end a line; an empty line says nothing.
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE {
            return self.too_long(fd);
        }
        if line.is_empty() {
            return;
        }
        if line.starts_with(b"/") {
            return self.command(fd, line);
        }
        RELAYED.add(1);
        let mut msg = Vec::with_capacity(client.name.len() + 3 + line.len());
        msg.extend_from_slice(client.name.as_bytes());
        msg.extend_from_slice(b": ");
        msg.extend_from_slice(visible(line).as_bytes());
        msg.push(b'\n');
        self.broadcast(&msg);
    }

    fn command(&mut self, fd: RawFd, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let (command, arg) = line.split_once(' ').unwrap_or((&line, ""));
        let arg = arg.trim();
        let reply = match command {
            "/nick" if !valid_name(arg) => {
                "! invalid name: use 1 to 32 letters, digits, '_' or '-'".to_owned()
            }
            "/nick" if self.name_taken(arg, Some(fd)) => format!("! name {arg} is taken"),
            "/nick" if self.clients[&fd].name == arg => format!("* you are already {arg}"),
            "/nick" => {
                let client = self.clients.get_mut(&fd).expect("the caller found it");
                let old = std::mem::replace(&mut client.name, arg.to_owned());
                self.broadcast(format!("* {old} is now {arg}\n").as_bytes());
                return;
            }
            "/who" => {
                let mut names: Vec<&str> = self
                    .clients
                    .values()
                    .filter(|c| c.in_room())
                    .map(|c| c.name.as_str())
                    .collect();
                names.sort_unstable();
                format!("* online ({}): {}", names.len(), names.join(", "))
            }
            "/quit" => {
                let client = self.clients.get_mut(&fd).expect("the caller found it");
                client.send(b"* bye\n");
                client.leaving = true;
                return;
            }
            _ => {
                let command = visible(command.as_bytes());
                format!("! unknown command {command}; try /nick NAME, /who or /quit")
            }
        };
        self.tell(fd, &reply);
    }

    /// A line over MAX_LINE: say so, and close that client once the error is sent.
    fn too_long(&mut self, fd: RawFd) {
        if let Some(client) = self.clients.get_mut(&fd) {
            if client.in_room() {
                client.send(b"! line too long\n");
                client.leaving = true;
                client.line = Vec::new();
            }
        }
    }

    /// Is `name` someone's, ignoring case (so that nobody can pass for "Ann" as "ann")? The
    /// asker's own name does not count: "ann" may become "Ann".
    fn name_taken(&self, name: &str, asker: Option<RawFd>) -> bool {
        let name = name.to_lowercase();
        self.clients
            .iter()
            .any(|(&fd, c)| Some(fd) != asker && c.in_room() && c.name.to_lowercase() == name)
    }

    /// One line to one client.
    fn tell(&mut self, fd: RawFd, text: &str) {
        if let Some(client) = self.clients.get_mut(&fd) {
            client.send(format!("{text}\n").as_bytes());
            self.touched.insert(fd);
        }
    }

    // ANCHOR: broadcast
    /// The same bytes to every member of the room: queued, never written here, so that a full
    /// socket never holds anyone up. settle() writes them after this pass's callbacks.
    fn broadcast(&mut self, msg: &[u8]) {
        for (&fd, client) in &mut self.clients {
            if client.in_room() {
                client.send(msg);
                self.touched.insert(fd);
            }
        }
    }
    // ANCHOR_END: broadcast

    // ANCHOR: settle
    /// Phase 4 for every client touched in this pass: write what the socket takes now, then
    /// close it if it is finished (telling the room, which touches the others again), or else
    /// ask the selector for what it needs now. Repeats until a round touches no one new.
    fn settle(&mut self) {
        while !self.touched.is_empty() {
            let touched = std::mem::take(&mut self.touched);
            for fd in touched {
                let Some(client) = self.clients.get_mut(&fd) else {
                    continue;
                };
                let asked = self.sel.get_key(fd).map(|key| key.events);
                // A client already waiting for WRITE had a full socket at the last try: the
                // selector will say when it drains; trying again now would only hear EAGAIN.
                let waiting = asked.is_some_and(|events| events.contains(Events::WRITE));
                if client.wants_write() && !waiting {
                    if let Err(e) = flush(&mut client.stream, &mut client.out) {
                        client.fail(e);
                    }
                }
                if client.finished() {
                    self.close(fd);
                    continue;
                }
                let want = client.wanted();
                if asked != Some(want) {
                    if let Err(e) = self.sel.modify(&client.stream, want, serve) {
                        client.fail(e);
                        self.touched.insert(fd);
                    }
                }
            }
        }
    }
    // ANCHOR_END: settle

    /// Unregisters (before the socket closes), drops the client, tells the room.
    fn close(&mut self, fd: RawFd) {
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        let _ = self.sel.unregister(&client.stream);
        trace!("{} ({}): closed", client.peer, client.name);
        let notice = if client.cut_off {
            format!("* {} was cut off (not reading)\n", client.name)
        } else {
            format!("* {} left\n", client.name)
        };
        drop(client); // closes the socket
        self.broadcast(notice.as_bytes());
    }
}

// ANCHOR: visible
/// Text that is safe to put on someone else's terminal: invalid UTF-8 becomes U+FFFD, and
/// every control character (C0, DEL and C1, which start the escape sequences that clear
/// screens, move the cursor or set the window title) is shown as `cat -v` shows it: `^[` for
/// ESC, `^?` for DEL, `M-^[` for U+009B. Every other character, 张三 included, is left as it is.
fn visible(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for c in String::from_utf8_lossy(bytes).chars() {
        match u32::from(c) {
            code @ 0..=0x1f => out.extend(['^', char::from(code as u8 + 0x40)]),
            0x7f => out.push_str("^?"),
            code @ 0x80..=0x9f => out.extend(['M', '-', '^', char::from(code as u8 - 0x40)]),
            _ => out.push(c),
        }
    }
    out
}
// ANCHOR_END: visible

/// 1 to 32 characters, each a letter or digit (any script: names are UTF-8), '_' or '-'.
fn valid_name(name: &str) -> bool {
    let count = name.chars().count();
    (1..=MAX_NAME).contains(&count)
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}
