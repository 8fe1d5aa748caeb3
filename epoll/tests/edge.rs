//! Why edge-triggered is "faster but harder": an edge is reported once, so a server that does
//! not read until WouldBlock leaves bytes in the kernel that no event will ever mention again.
//! `--read-once` is that bug on purpose; these tests show its effect, and that the real modes
//! do not have it.

use std::io::{self, Read, Write};
use std::time::Duration;

use conformance::{Server, read_exactly, upper};

const BIN: &str = env!("CARGO_BIN_EXE_epoll");
/// The server's BUF_SIZE: bytes per read.
const BUF_SIZE: usize = 4096;

/// Three reads' worth of bytes, sent in one write (one segment, so one edge, over loopback).
fn three_reads_worth(server: &Server) -> (std::net::TcpStream, Vec<u8>) {
    let mut c = server.connect();
    let data: Vec<u8> = (0..3 * BUF_SIZE).map(|i| b"abcdefghij"[i % 10]).collect();
    c.write_all(&data).unwrap();
    (c, data)
}

#[test]
fn edge_with_read_once_stalls_after_one_read() {
    let server = Server::start(BIN, &["--edge", "--read-once"]);
    let (mut c, data) = three_reads_worth(&server);
    assert_eq!(read_exactly(&mut c, BUF_SIZE), upper(&data[..BUF_SIZE]));
    // Absence is what is tested, so here (and only here) a read timeout is the tool: the other
    // 8 KiB sit in the server's socket buffer and no new edge comes to say so.
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut more = [0u8; 1];
    match c.read(&mut more) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("want a stall after {BUF_SIZE} bytes; the read gave {other:?}"),
    }
    // The bytes are not lost, only unannounced: one more byte raises a new edge, and the server
    // reads once more, the next BUF_SIZE of the old bytes.
    c.set_read_timeout(Some(conformance::PATIENCE)).unwrap();
    c.write_all(b"!").unwrap();
    assert_eq!(
        read_exactly(&mut c, BUF_SIZE),
        upper(&data[BUF_SIZE..2 * BUF_SIZE])
    );
}

#[test]
fn edge_drains_every_read() {
    let server = Server::start(BIN, &["--edge"]);
    let (mut c, data) = three_reads_worth(&server);
    assert_eq!(read_exactly(&mut c, data.len()), upper(&data));
}

#[test]
fn level_with_read_once_loses_nothing() {
    // Level-triggered, reading once per event is normal: the next wait reports what is left.
    let server = Server::start(BIN, &["--read-once"]);
    let (mut c, data) = three_reads_worth(&server);
    assert_eq!(read_exactly(&mut c, data.len()), upper(&data));
}
