//! `--mode fork`: a process per connection, as the classic Unix servers did it, with what that
//! takes besides `fork`: a thread that reaps the children as they exit (`waitpid` on each
//! SIGCHLD), so that none stays a zombie, and, on Ctrl-C, a SIGTERM to each child still serving.

use std::collections::HashSet;
use std::fs::File;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use support::{Counter, say};

use super::{PEAK, REFUSED, accept, handle_client};

/// Children reaped by `waitpid`.
pub static REAPED: Counter = Counter::new();

// ANCHOR: processes
/// A process per connection. The child serves the client and exits; the parent closes its
/// copy of the connection and goes back to accept. A dead child stays a zombie until its
/// parent collects its exit status with waitpid; a thread of ours does that on each SIGCHLD.
pub fn serve_processes(
    listener: TcpListener,
    mut spare: Option<File>,
    max_clients: usize,
    children: &Arc<Mutex<HashSet<Pid>>>,
) -> anyhow::Result<()> {
    // SIGCHLD is blocked here (and in every thread); the reaper takes it with sigwait. The
    // classic alternative, a handler that makes accept fail with EINTR, does not work in Rust:
    // std's accept quietly retries after EINTR.
    let mut sigchld = SigSet::empty();
    sigchld.add(Signal::SIGCHLD);
    sigchld.thread_block()?;
    let to_reap = Arc::clone(children);
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            while sigchld.wait().is_ok() {
                reap(&to_reap);
            }
        })?;
    loop {
        let Some((stream, peer)) = accept(&listener, &mut spare) else {
            continue;
        };
        // Held across fork, so the reaper cannot remove a child before it has been added.
        let mut live = children.lock().unwrap();
        if live.len() >= max_clients {
            REFUSED.add(1);
            say!("refusing {peer}: {max_clients} processes already serve clients (--max-clients)");
            continue;
        }
        // SAFETY: the child is a copy of this thread alone. It touches no lock that another
        // thread may hold at this moment: not `children`, and nothing the waiting threads use.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                support::reset_signals_in_child();
                // The child never accepts: close its copy of the listener, or the port would
                // stay open for as long as any child lives, even after the parent is gone
                // (and its copy of the spare, which only accept needs).
                drop(listener);
                drop(spare.take());
                handle_client(stream, peer);
                std::process::exit(0);
            }
            Ok(ForkResult::Parent { child }) => {
                say!("{peer}: served by process {child}");
                live.insert(child);
                PEAK.fetch_max(live.len(), Ordering::Relaxed);
                // `stream` is dropped here: the parent's copy closes, the child's stays open.
            }
            Err(e) => say!("fork for {peer}: {e}"),
        }
    }
}

/// Collects every child that has exited, without waiting for the ones still running.
fn reap(children: &Mutex<HashSet<Pid>>) {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        let pid = match status {
            WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => pid,
            _ => break, // StillAlive: nobody else has exited
        };
        REAPED.add(1);
        children.lock().unwrap().remove(&pid);
    }
}

/// On Ctrl-C: ask every child to stop, and wait for them, so none is left behind.
pub fn stop_children(children: &Mutex<HashSet<Pid>>) {
    // The lock is never given back: the main thread, which forks only while holding it, cannot
    // start a child after this point that nobody would stop (and that would fork a copy of
    // this thread's locks, stderr's included, held).
    let live = std::mem::ManuallyDrop::new(children.lock().unwrap());
    for pid in live.iter() {
        let _ = kill(*pid, Signal::SIGTERM);
    }
    for pid in live.iter() {
        if waitpid(*pid, None).is_ok() {
            REAPED.add(1);
        }
    }
}
// ANCHOR_END: processes
