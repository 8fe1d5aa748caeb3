"""A plain echo server written the way Python's documentation writes one, nothing like this
workspace's servers: socketserver, a thread per client, bytes back unchanged.

    python3 threaded_echo.py PORT [--one-at-a-time]

With --one-at-a-time it is socketserver's plain TCPServer, which serves one client at a time.
"""

import socketserver
import sys


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class Threaded(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256


class OneAtATime(socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 256


kind = OneAtATime if "--one-at-a-time" in sys.argv else Threaded
with kind(("127.0.0.1", int(sys.argv[1])), Echo) as server:
    server.serve_forever()
