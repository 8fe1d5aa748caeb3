"""A select echo server with one deliberate fault, for the checker's own tests.

    python3 broken.py PORT FAULT

Without a fault (FAULT = none) it keeps the contract. Each fault is a mistake students make,
and the checker must fail it on the check that names it:

    forget-upper   echoes the bytes unchanged                            -> hello
    latin1         upper-cases decoded text, so bytes above 127 change    -> binary
    drop-at-eof    closes at end-of-file, dropping what it still owes     -> half-close
    drop-at-eof-late  the same, but reads 1 MiB at a time, sends at once and never stops
                   reading: it owes nothing at end-of-file until a reader falls far behind
                                                                          -> slow-reader
    die-on-reset   lets a ConnectionResetError end the server             -> resets
    block-in-send  blocking sockets and sendall() in the loop (the lecture's mistake)
                                                                          -> slow-reader
    ignore-count   non-blocking send() whose count is ignored             -> slow-reader
    unbounded      never stops reading a client that does not read        -> memory
    busy           polls with a zero timeout instead of sleeping          -> idle-cpu
    busy-worker+fork  serves right, but its forked worker spins           -> idle-cpu
    die-at-100     dies on its 100th connection (a bug anywhere, not a check's fault)
                                                                          -> concurrent, "died"
    one-byte       correct, but reads one byte per wake-up: slow, not wrong
                                                                          -> slow-reader, "slow"
    deaf           accepts, then never reads                 -> every check, "no reply"
    deaf-to-sigint ignores SIGINT                        -> sigint says it was killed

A fault may end in `+fork`: the server then forks a worker that sleeps (as a pre-forking
server's workers wait in accept), and the checker must stop the worker with the server.

An optional third argument names a file to write the server's pid to (the worker's, with +fork).
"""

import os
import select
import signal
import socket
import sys

port, (fault, _, fork) = int(sys.argv[1]), sys.argv[2].partition("+")
pid = os.getpid()
if fork:
    pid = os.fork()
    if pid == 0:
        while fault == "busy-worker":
            pass  # a worker that polls instead of waiting
        signal.pause()
        os._exit(0)
if len(sys.argv) > 3:
    with open(sys.argv[3] + ".tmp", "w") as f:
        f.write(str(pid))
    os.rename(sys.argv[3] + ".tmp", sys.argv[3])
if fault == "deaf-to-sigint":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
LIMIT = 64 * 1024

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(128)
listener.setblocking(False)
out = {}  # socket -> bytearray still owed
eof = set()  # sockets that sent end-of-file
ignored = []  # deaf: accepted, never read
accepted = 0


def close(s):
    s.close()
    out.pop(s, None)
    eof.discard(s)


def transform(data):
    if fault == "forget-upper":
        return data
    if fault == "latin1":
        return data.decode("latin-1").upper().encode("latin-1", "replace")
    return data.upper()


def receive(s):
    try:
        data = s.recv({"one-byte": 1, "drop-at-eof-late": 1 << 20}.get(fault, 65536))
    except BlockingIOError:
        return
    except ConnectionError:
        if fault == "die-on-reset":
            raise
        close(s)
        return
    if not data:
        if fault.startswith("drop-at-eof"):
            close(s)
        else:
            eof.add(s)
        return
    try:
        if fault == "block-in-send":
            s.sendall(transform(data))
        elif fault == "ignore-count":
            s.send(transform(data))
        else:
            out[s] += transform(data)
            if fault == "drop-at-eof-late":
                send(s)
    except BlockingIOError:
        pass  # ignore-count: what did not fit is lost
    except ConnectionError:
        close(s)


def send(s):
    try:
        n = s.send(out[s])
    except BlockingIOError:
        return
    except ConnectionError:
        close(s)
        return
    del out[s][:n]


try:
    while True:
        limit = float("inf") if fault in ("unbounded", "drop-at-eof-late") else LIMIT
        readers = [listener] + [s for s in out if s not in eof and len(out[s]) < limit]
        writers = [s for s in out if out[s]]
        timeout = 0 if fault == "busy" else None
        readable, writable, _ = select.select(readers, writers, [], timeout)
        for s in readable:
            if s is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                accepted += 1
                if fault == "die-at-100" and accepted == 100:
                    raise RuntimeError("connection 100: a bug")
                if fault == "deaf":
                    ignored.append(conn)  # kept open, never read, never closed
                    continue
                conn.setblocking(fault == "block-in-send")
                out[conn] = bytearray()
            elif s in out:
                receive(s)
        for s in writable:
            if s in out:
                send(s)
        for s in [s for s in eof if not out[s]]:
            close(s)
except KeyboardInterrupt:
    print("broken: summary: stopped", file=sys.stderr)
