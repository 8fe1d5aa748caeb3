//! The chat room's protocol, end to end over TCP, on the real binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use conformance::Server;

const BIN: &str = env!("CARGO_BIN_EXE_selectors-chat");

/// One member of the room, reading line by line.
struct Member {
    name: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Member {
    /// Connects and reads the welcome, which names us.
    fn join(server: &Server) -> Member {
        Member::from(server.connect())
    }

    fn from(stream: TcpStream) -> Member {
        let writer = stream.try_clone().unwrap();
        let mut member = Member {
            name: String::new(),
            reader: BufReader::new(stream),
            writer,
        };
        let welcome = member.line();
        let rest = welcome
            .strip_prefix("* welcome, you are ")
            .unwrap_or_else(|| panic!("not a welcome: {welcome:?}"));
        member.name = rest.split(';').next().unwrap().to_owned();
        assert!(member.name.starts_with("guest-"), "{welcome:?}");
        member
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// The next line, without its newline; panics on EOF or timeout.
    fn line(&mut self) -> String {
        let mut line = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut line)
            .expect("read a line");
        assert!(n > 0 && line.ends_with(b"\n"), "EOF (got {line:?})");
        line.pop();
        String::from_utf8(line).expect("UTF-8 line")
    }

    /// Reads lines until one equals `want`; returns the ones skipped.
    fn until(&mut self, want: &str) -> Vec<String> {
        let mut skipped = Vec::new();
        loop {
            let line = self.line();
            if line == want {
                return skipped;
            }
            skipped.push(line);
        }
    }

    /// Reads lines until one starts with `prefix`, and returns it.
    fn until_prefix(&mut self, prefix: &str) -> String {
        loop {
            let line = self.line();
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// The server closed us: EOF after whatever was still queued.
    fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).expect("read to EOF");
    }

    /// The server closed us while we were still sending: EOF, or a reset (closing a socket
    /// with unread input sends RST), after whatever was still queued.
    fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        if let Err(e) = self.reader.read_to_end(&mut rest) {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
    }
}

fn welcome_join_broadcast_and_leave(args: &[&str]) {
    let server = Server::start(BIN, args);
    let mut a = Member::join(&server);
    let mut b = Member::join(&server);
    assert_ne!(a.name, b.name);
    assert_eq!(a.line(), format!("* {} joined", b.name));
    // Everyone gets every line, the sender included; \r\n works; empty lines say nothing.
    a.send(b"hello, room\r\n\n\r\n");
    a.send("ünïcödé\n".as_bytes());
    let a_name = a.name.clone();
    for m in [&mut a, &mut b] {
        assert_eq!(m.line(), format!("{a_name}: hello, room"));
        assert_eq!(m.line(), format!("{a_name}: ünïcödé"));
    }
    // Leaving by EOF is announced.
    let b_name = b.name.clone();
    drop(b);
    assert_eq!(a.line(), format!("* {b_name} left"));
}

#[test]
fn protocol_on_epoll() {
    welcome_join_broadcast_and_leave(&[]);
}

#[test]
fn protocol_on_poll() {
    welcome_join_broadcast_and_leave(&["--selector", "poll"]);
}

#[test]
fn protocol_on_select() {
    welcome_join_broadcast_and_leave(&["--selector", "select"]);
}

/// A member cannot drive the others' terminals: ESC, BEL, CR, backspace, DEL and the C1
/// controls (U+0080 to U+009F, which xterm also obeys) arrive shown as `cat -v` shows them, not
/// as themselves; invalid UTF-8 arrives as U+FFFD; real text, 张三 included, arrives unchanged.
#[test]
fn control_characters_never_reach_other_members() {
    let server = Server::start(BIN, &[]);
    let mut a = Member::join(&server);
    let mut b = Member::join(&server);
    a.until(&format!("* {} joined", b.name));
    // The attack, then every byte but the newline (so invalid UTF-8 too), then every C1
    // control as valid UTF-8, then text that must pass as it is.
    a.send(b"\x1b[2J\x1b]0;pwned\x07hello\r\n");
    let mut all: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
    all.push(b'\n');
    a.send(&all);
    let mut c1 = String::from("c1:");
    c1.extend((0x80..=0x9f).filter_map(char::from_u32));
    a.send(format!("{c1} /unknown \x1b[31m\n").as_bytes());
    a.send("张三 says hi\n".as_bytes());
    a.send(b"/\x1b]0;pwned\x07\n");
    let mut lines = Vec::new();
    for _ in 0..4 {
        let mut line = Vec::new();
        b.reader.read_until(b'\n', &mut line).expect("read a line");
        assert_eq!(line.pop(), Some(b'\n'), "EOF after {lines:?}");
        lines.push(line);
    }
    // The unknown command's echo goes to its sender only, and is made visible there too.
    lines.push(a.until_prefix("! unknown command").into_bytes());
    for line in &lines {
        let bad = line.iter().position(|&b| b < 0x20 || b == 0x7f);
        assert_eq!(bad, None, "a control byte reached a member: {line:?}");
        let text = std::str::from_utf8(line).expect("valid UTF-8");
        let c1 = text.chars().find(|c| ('\u{80}'..='\u{9f}').contains(c));
        assert_eq!(c1, None, "a C1 control reached a member: {text:?}");
    }
    let text = |i: usize| String::from_utf8(lines[i].clone()).unwrap();
    assert_eq!(text(0), format!("{}: ^[[2J^[]0;pwned^Ghello", a.name));
    assert!(text(1).contains("^@^A^B"), "{}", text(1));
    assert!(text(1).contains("^?\u{fffd}"), "{}", text(1));
    assert!(text(2).contains("c1:M-^@M-^A"), "{}", text(2));
    assert!(text(2).ends_with("M-^_ /unknown ^[[31m"), "{}", text(2));
    assert_eq!(text(3), format!("{}: 张三 says hi", a.name));
    assert!(text(4).contains("/^[]0;pwned^G"), "{}", text(4));
}

#[test]
fn nick_who_unknown_and_quit() {
    let server = Server::start(BIN, &[]);
    let mut a = Member::join(&server);
    let mut b = Member::join(&server);
    a.until(&format!("* {} joined", b.name));
    // A valid name is announced to everyone.
    a.send(b"/nick Ann\n");
    let renamed = format!("* {} is now Ann", a.name);
    assert_eq!(a.line(), renamed);
    assert_eq!(b.line(), renamed);
    // Taken (names are compared ignoring case), invalid, too long: an error to the asker only.
    b.send(b"/nick ann\n");
    assert!(b.line().starts_with("! name ann is taken"));
    for bad in [
        "/nick",
        "/nick two words",
        "/nick semi;colon",
        &format!("/nick {}", "x".repeat(33)),
    ] {
        b.send(format!("{bad}\n").as_bytes());
        let reply = b.line();
        assert!(reply.starts_with("! invalid name"), "{bad:?}: {reply:?}");
    }
    // UTF-8 letters are letters; 32 characters is the limit.
    b.send("/nick José\n".as_bytes());
    assert_eq!(b.line(), format!("* {} is now José", b.name));
    let long = "é".repeat(32);
    b.send(format!("/nick {long}\n").as_bytes());
    assert_eq!(b.line(), format!("* José is now {long}"));
    b.send(b"/nick Bob\n");
    assert_eq!(b.line(), format!("* {long} is now Bob"));
    // /who: one notice, to the asker.
    b.send(b"/who\n");
    assert_eq!(b.line(), "* online (2): Ann, Bob");
    b.send(b"/dance\n");
    assert!(b.line().starts_with("! unknown command /dance"));
    // None of the errors reached Ann; she saw the renames, then the message.
    b.send(b"done\n");
    assert_eq!(b.line(), "Bob: done");
    assert_eq!(
        a.until("Bob: done"),
        [
            "* guest-2 is now José".to_owned(),
            format!("* José is now {long}"),
            format!("* {long} is now Bob"),
        ]
    );
    // /quit: a goodbye, then the server closes; the others are told.
    b.send(b"/quit\nthis is never relayed\n");
    assert_eq!(b.line(), "* bye");
    b.expect_eof();
    assert_eq!(a.line(), "* Bob left");
    a.send(b"/who\n");
    assert_eq!(a.line(), "* online (1): Ann");
}

#[test]
fn nick_to_ones_own_name_in_another_case() {
    let server = Server::start(BIN, &[]);
    let mut a = Member::join(&server);
    let mut b = Member::join(&server);
    a.until(&format!("* {} joined", b.name));
    // One's own name is not "taken": the same name is a no-op, another case is a rename.
    let own = a.name.clone();
    a.send(format!("/nick {own}\n").as_bytes());
    assert_eq!(a.line(), format!("* you are already {own}"));
    let upper = own.to_uppercase();
    a.send(format!("/nick {upper}\n").as_bytes());
    let renamed = format!("* {own} is now {upper}");
    assert_eq!(a.line(), renamed);
    // The other member saw the rename only, and still cannot take the name in any case.
    assert_eq!(b.line(), renamed);
    b.send(format!("/nick {own}\n").as_bytes());
    assert_eq!(b.line(), format!("! name {own} is taken"));
}

#[test]
fn a_line_too_long_closes_only_its_sender() {
    let server = Server::start(BIN, &[]);
    let mut a = Member::join(&server);
    let mut b = Member::join(&server);
    a.until(&format!("* {} joined", b.name));
    // 4,096 bytes is the limit, and fine.
    let max = "m".repeat(4096);
    a.send(format!("{max}\r\n").as_bytes());
    assert_eq!(b.line(), format!("{}: {max}", a.name));
    a.until(&format!("{}: {max}", a.name));
    // One byte more: an error, then the server closes that client.
    a.send(format!("{max}x\n").as_bytes());
    assert_eq!(a.line(), "! line too long");
    a.expect_eof();
    // The others notice nothing but its leaving.
    assert_eq!(b.line(), format!("* {} left", a.name));
    b.send(b"/who\n");
    assert_eq!(b.line(), format!("* online (1): {}", b.name));
    // Without a newline at all, the line is too long as soon as it cannot end in time.
    let mut c = Member::join(&server);
    c.send(&vec![b'y'; 10_000]);
    assert_eq!(c.line(), "! line too long");
    c.expect_closed();
    assert_eq!(
        b.until(&format!("* {} left", c.name)),
        [format!("* {} joined", c.name)]
    );
}

#[test]
fn a_stalled_reader_is_cut_off_and_the_room_goes_on() {
    let server = Server::start(BIN, &[]);
    let rss_before = conformance::rss_kib(server.pid());
    // The stalled member connects first (so it is guest-1) and never reads a byte.
    let mut stalled = server.connect();
    let mut talker = Member::join(&server);
    let mut observer = Member::join(&server);
    talker.until(&format!("* {} joined", observer.name));
    assert_eq!(talker.name, "guest-2");

    // The talker sends 4 KB lines until the observer hears that guest-1 was cut off (bounded:
    // 64 MiB at most), then one last line. Both read everything, in threads of their own.
    let cut = Arc::new(AtomicBool::new(false));
    let mut writer = talker.writer.try_clone().unwrap();
    let (cut2, text) = (Arc::clone(&cut), "t".repeat(4000));
    let sender = thread::spawn(move || {
        let mut sent = 0;
        while !cut2.load(Ordering::SeqCst) && sent < 16_000 {
            writer.write_all(format!("{text}\n").as_bytes()).unwrap();
            sent += 1;
        }
        writer.write_all(b"after\n").unwrap();
        sent
    });
    let cut3 = Arc::clone(&cut);
    let watcher = thread::spawn(move || {
        let skipped = observer.until("* guest-1 was cut off (not reading)");
        cut3.store(true, Ordering::SeqCst);
        assert!(skipped.iter().all(|l| l.starts_with("guest-2: ")));
        observer.until("guest-2: after");
    });
    talker.until("guest-2: after");
    watcher.join().unwrap();
    let sent = sender.join().unwrap();
    assert!(cut.load(Ordering::SeqCst), "not cut off after {sent} lines");
    // The server holds at most MAX_OUT per member, not what the stalled one failed to read.
    let grown = conformance::rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(grown < 16 * 1024, "the server grew by {grown} KiB");
    // The stalled member's connection was closed: what the kernel held, then EOF.
    let mut rest = Vec::new();
    stalled.read_to_end(&mut rest).expect("EOF, not an error");
    let stopped = server.interrupt();
    assert!(
        stopped.stderr.contains(", 1 client cut off,"),
        "{}",
        stopped.stderr
    );
}

#[test]
fn one_message_fans_out_to_a_thousand() {
    let _turn = conformance::heavy_lock();
    let server = Server::start(BIN, &[]);
    let streams = conformance::connect_many(&server, 1000);
    let mut members: Vec<Member> = streams.into_iter().map(Member::from).collect();
    let first = members[0].name.clone();
    members[0].send(b"one for all\n");
    let want = format!("{first}: one for all");
    for (i, m) in members.iter_mut().enumerate() {
        let skipped = m.until(&want);
        // Before it, only the notices of those who joined after this member.
        assert!(skipped.iter().all(|l| l.ends_with(" joined")), "member {i}");
    }
    let stopped = server.interrupt();
    assert!(stopped.status.success());
    assert!(
        stopped.stderr.contains("1000 connections"),
        "{}",
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains(", 1 message relayed,"),
        "{}",
        stopped.stderr
    );
}

/// `-v` names the mechanism that really waits: epoll by default, poll when asked for it.
#[test]
fn traces_name_the_mechanism() {
    for (args, want) in [
        (&["-v"][..], "epoll: "),
        (&["-v", "--selector", "poll"], "poll: "),
    ] {
        let server = Server::start(BIN, args);
        let _a = Member::join(&server);
        let stderr = server.wait_for_stderr(&format!("selectors-chat: {want}1 ready of"));
        assert!(!stderr.contains("select: "), "{stderr}");
    }
}

#[test]
fn sigint_summary_names_the_selector() {
    let server = Server::start(BIN, &["--selector", "poll"]);
    let mut a = Member::join(&server);
    a.send(b"hi\n");
    a.until(&format!("{}: hi", a.name));
    let stopped = server.interrupt();
    assert!(stopped.status.success(), "{:?}", stopped.status);
    for needle in [
        "selector: poll",
        "summary: 1 connection,",
        " poll wait",
        "1 message relayed",
        "0 clients cut off",
    ] {
        assert!(
            stopped.stderr.contains(needle),
            "no {needle:?} in:\n{}",
            stopped.stderr
        );
    }
}

/// Ctrl-C stops a busy room. Four members keep it busy (a descriptor is ready at every wait),
/// each sending lines over and over and reading every broadcast; SIGINT must still end it
/// cleanly. A masked wait (pselect, ppoll, epoll_pwait) that finds descriptors ready returns at
/// once and leaves the signal pending: a loop that meets Ctrl-C only as EINTR never stops.
/// (The echo servers' version is `conformance::stop_under_load`.)
#[test]
fn interrupt_under_load() {
    for selector in ["epoll", "poll", "select"] {
        let server = Server::start(BIN, &["--selector", selector]);
        let (flowing, started) = std::sync::mpsc::channel();
        let mut load = Vec::new();
        for _ in 0..4 {
            let mut writer = server.connect();
            let mut reader = writer.try_clone().unwrap();
            let flowing = flowing.clone();
            load.push(thread::spawn(move || {
                let (mut buf, mut total) = (vec![0u8; 64 * 1024], 0);
                // Until EOF or an error: the server's exit ends it either way.
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    total += n;
                    if total >= 1 << 20 && total - n < 1 << 20 {
                        let _ = flowing.send(());
                    }
                }
            }));
            let burst = b"busy\n".repeat(64 * 1024 / 5);
            load.push(thread::spawn(
                move || {
                    while writer.write_all(&burst).is_ok() {}
                },
            ));
        }
        // The load is flowing once a member has had a MiB of broadcasts. (Not all four need
        // to: the room may cut off a member that falls behind the others.)
        started
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("broadcasts under load");
        server.interrupt().assert_clean();
        for t in load {
            t.join().unwrap();
        }
    }
}
