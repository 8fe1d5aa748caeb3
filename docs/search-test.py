#!/usr/bin/env python3
"""Types words into the built book's search box in headless Chromium and checks what it finds.

    python3 docs/search-test.py docs/book

Serves the built site (docs/build makes it) on a free loopback port with the standard library's
http.server, opens a page of each edition with ?search=WORD (js/book.js types WORD into the
Pagefind box) in headless Chromium, and reads the result links from the page once they appear.
It also follows the language switch of a few pages to the same chapter in the other edition.
Chromium is driven over its DevTools protocol with nothing but the standard library: a minimal
WebSocket client below.
"""

import base64
import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

# (edition directory, word typed, page that must be among the results)
CASES = [
    ("zh-CN/", "边缘触发", "epoll.html"),
    ("zh-CN/", "水平触发", "epoll.html"),
    ("zh-CN/", "阻塞", "blocking.html"),
    ("zh-CN/", "FD_SETSIZE", "select.html"),
    ("", "FD_SETSIZE", "select.html"),
    ("", "edge-triggered", "epoll.html"),
]


# (page, where its language switch must lead): the same chapter in the other edition.
SWITCHES = [("epoll.html", "zh-CN/epoll.html"), ("zh-CN/select.html", "select.html"),
            ("zh-CN/", "index.html")]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class DevTools:
    """One headless Chromium, one tab, spoken to over the DevTools protocol (a WebSocket)."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="search-test-")
        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 60
        for line in self.proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/..."
            m = re.search(r"DevTools listening on ws://([^/]+)/", line)
            if m:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
        else:
            raise RuntimeError("chromium exited: is it installed?")
        threading.Thread(target=lambda: self.proc.stderr.read(), daemon=True).start()
        host = m.group(1)
        tabs = json.load(urllib.request.urlopen(f"http://{host}/json/list"))
        page = next(t for t in tabs if t["type"] == "page")
        self.sock = self._connect(page["webSocketDebuggerUrl"])
        self.next_id = 0

    @staticmethod
    def _connect(url):
        u = urllib.parse.urlparse(url)
        sock = socket.create_connection((u.hostname, u.port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"websocket handshake refused: {head!r}")
        return sock

    def _send(self, text):
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536 else
                                bytes([0x80 | 127]) + n.to_bytes(8, "big"))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise RuntimeError("chromium closed the connection")
            buf += chunk
        return buf

    def _receive(self):
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._exact(2), "big")
            elif n == 127:
                n = int.from_bytes(self._exact(8), "big")
            message += self._exact(n)
            if b0 & 0x80:  # the final fragment
                return message.decode()

    def call(self, method, **params):
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._receive())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        return result["result"].get("value")

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


# Waits until Pagefind has shown results (or said it found none), then lists the results' links.
RESULTS = """new Promise((resolve) => {
  const t0 = Date.now();
  const links = () => [...document.querySelectorAll(".pagefind-ui__result-link")].map((a) => a.href);
  (function check() {
    const msg = document.querySelector(".pagefind-ui__message");
    if (msg && !/^Searching/.test(msg.textContent)) setTimeout(() => resolve(links()), 300);
    else if (Date.now() - t0 > 20000) resolve(links());
    else setTimeout(check, 100);
  })();
})"""


def results(browser, url):
    """The result links Pagefind shows on `url`."""
    browser.call("Page.navigate", url=url)
    deadline = time.monotonic() + 30
    while browser.evaluate("location.href + ' ' + document.readyState") != f"{url} complete":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not load")
        time.sleep(0.05)
    return browser.evaluate(RESULTS) or []


def main():
    site = sys.argv[1] if len(sys.argv) > 1 else "docs/book"
    handler = functools.partial(Quiet, directory=site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    failed = 0
    browser = DevTools()
    try:
        for edition, word, want in CASES:
            url = f"http://127.0.0.1:{port}/{edition}index.html?search={urllib.parse.quote(word)}"
            links = results(browser, url)
            pages = list(dict.fromkeys(urllib.parse.urlparse(link).path for link in links))
            ok = any(p == f"/{edition}{want}" for p in pages)
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} /{edition or ''} {word!r} -> {want}: "
                  f"{', '.join(pages[:6]) or 'no results'}")
        for page, want in SWITCHES:
            url = f"http://127.0.0.1:{port}/{page}"
            browser.call("Page.navigate", url=url)
            deadline = time.monotonic() + 30
            href = None
            while not href and time.monotonic() < deadline:
                href = browser.evaluate(
                    f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
                    " && document.querySelector('.language-switch')?.href")
                time.sleep(0.05)
            ok = href == f"http://127.0.0.1:{port}/{want}"
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} /{page}: language switch -> {href}")
    finally:
        browser.close()
        server.shutdown()
    total = len(CASES) + len(SWITCHES)
    print(f"search and language switch: {total - failed} of {total} checks succeeded")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
