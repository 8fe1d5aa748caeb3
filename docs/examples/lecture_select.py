"""The lecture's select server, as the lecture writes it: only the port comes from the command
line (`python3 lecture_select.py 8081`), and the missing parenthesis is closed.

Run the checker on it (see the book's chapter "Check your own server"):
    cargo run -p conformance -- --spawn 'python3 docs/examples/lecture_select.py {port}'
"""

import select
import sys
from socket import AF_INET, SO_REUSEADDR, SOCK_STREAM, SOL_SOCKET, socket

# ANCHOR: lecture
s = socket(AF_INET, SOCK_STREAM)
s.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(5)
s.setblocking(False)
read_l = [s]
while True:
    r_l, w_l, x_l = select.select(read_l, [], [])
    for ready_obj in r_l:
        if ready_obj == s:
            conn, addr = ready_obj.accept()
            read_l.append(conn)
        else:
            try:
                data = ready_obj.recv(1024)
                if not data:
                    ready_obj.close()
                    read_l.remove(ready_obj)
                    continue
                ready_obj.send(data.upper())
            except ConnectionResetError:
                ready_obj.close()
                read_l.remove(ready_obj)
# ANCHOR_END: lecture
