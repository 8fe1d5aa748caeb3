//! The two threads that turn what aio_suspend cannot wait for into AIO completions: new
//! connections (no AIO call accepts) and Ctrl-C (aio_suspend takes no signal mask). Each writes
//! a byte to the wake-up pipe, on which the loop always has an aio_read outstanding.

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::SyncSender;
use std::thread;

use anyhow::Context;
use nix::sys::signal::SigSet;
use support::{say, trace};

/// Accepts connections in a thread of its own, since aio_suspend cannot wait for a listener,
/// and wakes the loop through the pipe. Ends when the listener is shut down (EINVAL).
pub fn spawn_acceptor(
    listener: TcpListener,
    to_loop: SyncSender<(TcpStream, SocketAddr)>,
    wake: File,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let run = move || {
        let mut spare = None;
        loop {
            // (Re)take the spare first: a free descriptor goes to it before any client.
            spare = spare.or_else(support::reserve_descriptor);
            let accepted = match listener.accept() {
                // Out of descriptors: accept fails before it even looks for a connection. Give
                // back the spare and accept into its slot (this may wait for the next client).
                // If a descriptor is free beside the spare, clients have left since: serve it.
                // If not, close it unserved, and take the spare back.
                Err(e) if support::out_of_descriptors(&e) => {
                    drop(spare.take());
                    let accepted = listener.accept();
                    spare = support::reserve_descriptor();
                    match accepted {
                        Ok((stream, peer)) if spare.is_none() => {
                            drop(stream);
                            say!("accept: {e}; closing {peer} unserved");
                            continue;
                        }
                        other => other,
                    }
                }
                other => other,
            };
            match accepted {
                Ok(conn) => {
                    if to_loop.send(conn).is_err() {
                        return;
                    }
                    let _ = (&wake).write(b"a");
                }
                Err(e) if support::interrupted(&e) => {}
                // The listener was shut down: we are stopping.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(e) => trace!("accept: {e}"),
            }
        }
    };
    thread::Builder::new()
        .name("acceptor".into())
        .spawn(run)
        .context("spawn the accept thread")
}

/// Ctrl-C, race-free without a mask on aio_suspend: this thread sleeps in ppoll with SIGINT
/// and SIGTERM unblocked, the one place in the process where they are. The handler sets the
/// stop flag, ppoll returns EINTR, and a byte on the pipe completes the loop's aio_read.
pub fn spawn_signal_waiter(wait_mask: SigSet, wake: File) -> anyhow::Result<()> {
    let run = move || {
        let mut nothing: [nix::poll::PollFd; 0] = [];
        while !support::stop_requested() {
            let _ = nix::poll::ppoll(&mut nothing, None, Some(wait_mask));
        }
        let _ = (&wake).write(b"s");
    };
    thread::Builder::new()
        .name("signals".into())
        .spawn(run)
        .context("spawn the signal thread")?;
    Ok(())
}
