//! `--echo`: the lecture's selectors example, kept to the workspace's echo contract.
//!
//! As in the lecture, each registration's data is the function to call when its descriptor is
//! ready: `accept` for the listener, `serve` for a client, and the loop just calls it. Unlike
//! the lecture, nothing here blocks: `serve` queues the reply in the client's output buffer,
//! writes what the socket takes, and asks the selector for WRITE only while bytes are pending;
//! a client whose output backs up is not read from until it drains (back-pressure).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use anyhow::Context;
use support::{Counter, STATS, count, trace};

use crate::selector::{Events, Selector};
use crate::{BUF_SIZE, flush, handle_new_connection, refuse};

/// Back-pressure: stop reading from a client while this much of its output is unsent.
const MAX_PENDING: usize = 64 * 1024;

/// Times a client's interest changed (one `modify`, a system call with epoll and kqueue).
static MODIFIES: Counter = Counter::new();

/// What the lecture stores as `data`: the function to call when the descriptor is ready.
pub type Callback = fn(&mut Echo, RawFd, Events);

/// Everything the callbacks share.
pub struct Echo {
    sel: Selector<Callback>,
    listener: TcpListener,
    clients: HashMap<RawFd, Client>,
    spare: Option<File>,
    buf: [u8; BUF_SIZE],
}

// ANCHOR: client
/// One connected client: its socket and the bytes we owe it.
struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    /// Upper-cased bytes not yet written (a slow reader's backlog, at most ~MAX_PENDING).
    out: Vec<u8>,
    /// The client sent EOF: we read no more, and close once `out` is empty.
    eof: bool,
    /// A read or write failed (reset, broken pipe): close now.
    broken: bool,
}

impl Client {
    fn new(stream: TcpStream, peer: SocketAddr) -> Client {
        Client {
            stream,
            peer,
            out: Vec::new(),
            eof: false,
            broken: false,
        }
    }
    /// Read interest: not after EOF, and not while its output is backed up (back-pressure).
    fn wants_read(&self) -> bool {
        !self.eof && !self.broken && self.out.len() < MAX_PENDING
    }
    /// Write interest: only while there is something to write.
    fn wants_write(&self) -> bool {
        !self.broken && !self.out.is_empty()
    }
    fn finished(&self) -> bool {
        self.broken || (self.eof && self.out.is_empty())
    }
    fn fail(&mut self, err: io::Error) {
        trace!("{}: {err}; closing", self.peer);
        self.broken = true;
    }
    /// What to ask the selector for now.
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
}
// ANCHOR_END: client

/// Serves echo until Ctrl-C; returns this mode's counters for the summary.
pub fn run(listener: TcpListener, sel: Selector<Callback>) -> anyhow::Result<Vec<String>> {
    let mut echo = Echo {
        sel,
        listener,
        clients: HashMap::new(),
        spare: support::reserve_descriptor(),
        buf: [0; BUF_SIZE],
    };
    // sel.register(server_fileobj, EVENT_READ, accept)
    echo.sel
        .register(&echo.listener, Events::READ, accept)
        .context("register the listener")?;

    // ANCHOR: loop
    while !support::stop_requested() {
        // Phase 1: wait. The selector answers with the keys that are ready, and for what.
        let ready = echo.sel.select(None).context("select")?;
        STATS.wakeups.add(1);
        let kind = echo.sel.kind().name();
        trace!(
            "{kind}: {} ready of {} watched",
            ready.len(),
            echo.sel.len()
        );

        // Phases 2 to 4: each key's data is the function to call, with the descriptor and the
        // events: `accept` for the listener (phase 2), `serve` for a client (phases 3 and 4).
        for (key, events) in ready {
            let callback = key.data;
            callback(&mut echo, key.fd, events);
        }
    }
    // ANCHOR_END: loop
    Ok(vec![count(
        MODIFIES.get(),
        "interest change",
        "interest changes",
    )])
}

// ANCHOR: accept
/// The listener's callback: accept everyone waiting, register each with `serve`.
fn accept(echo: &mut Echo, _fd: RawFd, _events: Events) {
    for (stream, peer) in handle_new_connection(&echo.listener, &mut echo.spare) {
        if let Err(e) = echo.sel.register(&stream, Events::READ, serve) {
            refuse(peer, e); // dropping `stream` closes it
            continue;
        }
        let n = count(echo.clients.len() as u64 + 1, "client", "clients");
        trace!("{peer}: connected ({n})");
        echo.clients
            .insert(stream.as_raw_fd(), Client::new(stream, peer));
    }
}
// ANCHOR_END: accept

// ANCHOR: serve
/// A client's callback: read if readable, write if writable, then tell the selector what we
/// want next, or close.
fn serve(echo: &mut Echo, fd: RawFd, events: Events) {
    let Some(client) = echo.clients.get_mut(&fd) else {
        return;
    };
    // Phase 3: read and write, only what the selector said will not block.
    if events.contains(Events::READ) && client.wants_read() {
        handle_client_data(client, &mut echo.buf);
    }
    if events.contains(Events::WRITE) {
        if let Err(e) = flush(&mut client.stream, &mut client.out) {
            client.fail(e);
        }
    }
    // Phase 4: ask the selector for what this client needs now (WRITE only while output is
    // pending), or close it, unregistering first: the selector holds the number, not the socket.
    let want = client.wanted();
    if !client.finished() && echo.sel.get_key(fd).map(|key| key.events) != Some(want) {
        MODIFIES.add(1);
        if let Err(e) = echo.sel.modify(&client.stream, want, serve) {
            client.fail(e);
        }
    }
    if client.finished() {
        let _ = echo.sel.unregister(&client.stream);
        trace!(
            "{}: closed ({} bytes unsent)",
            client.peer,
            client.out.len()
        );
        echo.clients.remove(&fd); // dropping the stream closes it
    }
}
// ANCHOR_END: serve

// ANCHOR: handle_client_data
/// Reads once from a ready client, queues the upper-cased bytes, and writes what it can.
fn handle_client_data(client: &mut Client, buf: &mut [u8]) {
    STATS.calls.add(1);
    match client.stream.read(buf) {
        // EOF: the client will send no more. Flush what we owe, then close.
        Ok(0) => client.eof = true,
        Ok(n) => {
            STATS.bytes_in.add(n as u64);
            support::transform(&mut buf[..n]);
            client.out.extend_from_slice(&buf[..n]);
            if let Err(e) = flush(&mut client.stream, &mut client.out) {
                client.fail(e);
            }
        }
        // Not ready after all (it happens); the next pass will ask again.
        Err(e) if support::would_block(&e) => STATS.would_block.add(1),
        Err(e) if support::interrupted(&e) => {}
        Err(e) => client.fail(e),
    }
}
// ANCHOR_END: handle_client_data
