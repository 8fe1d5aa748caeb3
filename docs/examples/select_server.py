"""The lecture's select server, fixed: it keeps the contract the book's servers keep.

    python3 select_server.py [PORT]        (default 8080; 0 picks a free port)

Three changes make it right, each one a check it failed before:
- every socket is non-blocking, and what send() did not take waits in the client's output
  buffer, written when select says the socket is writable (slow-reader, binary);
- a client whose buffer holds LIMIT bytes is not read until it drains (back-pressure: memory);
- end-of-file stops the reading, not the writing: the client is closed once its buffer is
  empty (half-close).
"""

import select
import socket
import sys

LIMIT = 64 * 1024  # bytes owed to one client before we stop reading it


# ANCHOR: client
class Client:
    def __init__(self, sock):
        self.sock = sock
        self.out = bytearray()  # replies not yet sent
        self.eof = False  # the client has sent end-of-file

    def wants_read(self):
        return not self.eof and len(self.out) < LIMIT

    def wants_write(self):
        return len(self.out) > 0

    def finished(self):
        return self.eof and not self.out
# ANCHOR_END: client


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.setblocking(False)
    print("listening on 127.0.0.1:%d" % listener.getsockname()[1], flush=True)
    clients = {}  # socket -> Client
    served = 0
    try:
        # ANCHOR: loop
        while True:
            readers = [listener] + [c.sock for c in clients.values() if c.wants_read()]
            writers = [c.sock for c in clients.values() if c.wants_write()]
            readable, writable, _ = select.select(readers, writers, [])
            for sock in readable:
                if sock is listener:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    clients[conn] = Client(conn)
                    served += 1
                else:
                    receive(clients[sock])
            for sock in writable:
                if sock in clients:
                    send(clients[sock])
            for c in [c for c in clients.values() if c.finished()]:
                c.sock.close()
                del clients[c.sock]
        # ANCHOR_END: loop
    except KeyboardInterrupt:
        print("select_server: summary: %d connections" % served, file=sys.stderr)


# ANCHOR: io
def receive(c):
    try:
        data = c.sock.recv(65536)
    except BlockingIOError:
        return
    except ConnectionError:  # reset by the client: drop it, keep serving the others
        c.out.clear()
        c.eof = True
        return
    if data:
        c.out += data.upper()  # bytes.upper(): ASCII a-z only, every other byte unchanged
        send(c)
    else:
        c.eof = True  # stop reading; what is owed is still sent, then finished() closes it


def send(c):
    try:
        n = c.sock.send(c.out)  # takes what fits in the socket's buffer, and says how much
    except BlockingIOError:
        return
    except ConnectionError:
        c.out.clear()
        c.eof = True
        return
    del c.out[:n]  # keep the rest for the next time select says writable
# ANCHOR_END: io


if __name__ == "__main__":
    main()
