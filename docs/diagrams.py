#!/usr/bin/env python3
"""Writes the book's diagrams, docs/src/img/*.svg, in one style.

Every model diagram has the same grammar, so that students compare pictures, not drawing styles:
time runs down; the left lane is your process, the right lane is the kernel; the kernel lane
shows the two phases of every input operation, (1) waiting for data and (2) copying it into the
process; the process's lifeline is green while it runs and red while it is blocked; a solid arrow
is a system call, a dashed arrow is its return (or a notification).

Run it after changing a picture: `python3 docs/diagrams.py`. The SVGs are committed; the book
does not need Python to build. It writes two sets: English in src/img/, and Chinese in
src/img/zh-CN/ (the Chinese edition's image references point there, through docs/po/zh-CN.po),
with every label looked up in ZH below. A label missing from ZH stops the script, so a new
English label cannot slip into the Chinese pictures untranslated; code (monospace) stays as is.
"""

import re
from pathlib import Path
from xml.sax.saxutils import escape

OUT = Path(__file__).resolve().parent / "src" / "img"

PAPER = "#fdfcf7"
INK = "#2b2b2b"
SOFT = "#6b6b6b"
RUN = "#5b9a5a"
BLOCK = "#c8553d"
WAIT = "#dbe9f6"
COPY = "#fde2c4"
FONTS = {
    "en": "font-family='DejaVu Sans, Verdana, Arial, sans-serif'",
    "zh-CN": "font-family='Noto Sans CJK SC, Source Han Sans SC, PingFang SC, Microsoft YaHei, "
    "WenQuanYi Micro Hei, DejaVu Sans, sans-serif'",
}
MONO = "font-family='DejaVu Sans Mono, Menlo, Consolas, monospace'"

W = 680
APP_X = 200  # the process's lifeline
KER_X = 470  # the kernel's lifeline
BAND_L, BAND_R = 420, 660  # the kernel's phase bands

# The Chinese labels, in the lecture's terms (阻塞, 就绪, 水平触发/边缘触发, ...).
ZH = {
    "your process": "你的进程",
    "kernel": "内核",
    "time": "时间",
    "(1) waiting for data": "(1) 等待数据",
    "(2) copying data to the process": "(2) 把数据拷贝给进程",
    "runs": "运行",
    "blocked": "阻塞",
    "process runs": "进程运行",
    "process blocked": "进程阻塞",
    "(1) wait for data": "(1) 等待数据",
    "(2) copy to the process": "(2) 拷贝给进程",
    "Blocking I/O: one call, blocked through both phases": "阻塞IO：一次调用，两个阶段都阻塞",
    "The process sleeps from the call until the bytes are in its buffer.":
        "进程从发起调用起一直睡眠，直到字节进入它的缓冲区。",
    "no data yet: the thread sleeps": "还没有数据：线程睡眠",
    "data arrives": "数据到达",
    "n bytes": "n 字节",
    "Non-blocking I/O: ask, ask again, ... then copy": "非阻塞IO：问，再问……然后拷贝",
    "Phase 1 costs CPU instead of sleep; phase 2 still happens inside the call.":
        "阶段 1 不睡眠而是耗费 CPU；阶段 2 仍然发生在调用内部。",
    "runs, and spins": "运行，空转",
    "blocked (copy)": "阻塞（拷贝）",
    "I/O multiplexing: wait on many, then read the ready one": "IO多路复用：在多个描述符上等待，然后读就绪的那个",
    "Blocked twice, but in phase 1 the wait covers every descriptor at once.":
        "阻塞两次，但阶段 1 的一次等待同时覆盖所有描述符。",
    "blocked in the wait": "阻塞在等待中",
    "(1) waiting for any of many": "(1) 等待多个中的任意一个",
    "data arrives on fd 7": "数据到达 fd 7",
    "fd 7 is readable": "fd 7 可读",
    "Signal-driven I/O: the kernel signals readiness": "信号驱动IO：内核用信号通知就绪",
    "No call waits in phase 1; the signal says 'ready', and read still copies.":
        "阶段 1 没有调用在等待；信号说\"就绪\"，拷贝仍由 read 完成。",
    "0 (armed)": "0（已设置）",
    "free to run": "自由运行",
    "signal: SIGRTMIN+n, si_fd = 7": "信号：SIGRTMIN+n，si_fd = 7",
    "Asynchronous I/O: submit, and collect a completion": "异步IO：提交请求，收取完成通知",
    "Both phases happen without the process: it is told when the bytes are there.":
        "两个阶段都不需要进程参与：字节到位时它会得到通知。",
    "queued": "已入队",
    "(2) kernel copies into buf": "(2) 内核拷贝到 buf",
    "completion: n bytes in buf": "完成：buf 中有 n 字节",
    "(io_uring: a CQE; POSIX AIO: aio_error / a signal)": "（io_uring：一个 CQE；POSIX AIO：aio_error / 信号）",
    "The five I/O models compared": "五种IO模型的比较",
    "The five I/O models: where the process is blocked": "五种IO模型：进程在哪里阻塞",
    "(1) wait": "(1) 等待",
    "for data": "数据",
    "(2) copy": "(2) 拷贝",
    "to process": "给进程",
    "blocking": "阻塞IO",
    "non-blocking": "非阻塞IO",
    "multiplexing": "IO多路复用",
    "signal-driven": "信号驱动IO",
    "asynchronous": "异步IO",
    "spins: read, EAGAIN...": "空转：read、EAGAIN……",
    "blocked in select": "阻塞在 select",
    "runs; a signal comes": "运行；信号到来",
    "synchronous: the copy blocks the caller (POSIX)": "同步：拷贝阻塞调用者（POSIX）",
    "Level-triggered vs edge-triggered epoll": "epoll 的水平触发与边缘触发",
    "Level vs edge: the same bytes, two ways of reporting them": "水平触发与边缘触发：同样的字节，两种报告方式",
    "bytes in the": "接收缓冲区",
    "receive buffer": "中的字节",
    "2 KiB arrive": "到达 2 KiB",
    "read 1 KiB": "读 1 KiB",
    "1 KiB more": "又到 1 KiB",
    "read to EAGAIN": "读到 EAGAIN",
    "level-triggered": "水平触发",
    "edge-triggered": "边缘触发",
    "reported on every epoll_wait while bytes remain": "只要还有字节，每次 epoll_wait 都报告",
    "1 KiB left, unreported": "剩 1 KiB，不报告",
    "reported once per arrival: read until EAGAIN, or the rest waits": "每次到达只报告一次：要读到 EAGAIN，否则剩下的只能等着",
    "epoll_wait reports the socket": "epoll_wait 报告该套接字",
    "epoll_wait does not report it": "epoll_wait 不报告它",
}
LANG = "en"  # set by main() for each set of pictures


def tr(s):
    """`s` in the language being drawn."""
    if LANG == "en" or not s:
        return s
    if s not in ZH:
        raise SystemExit(f"diagrams.py: no Chinese for the label {s!r}: add it to ZH")
    return ZH[s]


class Svg:
    def __init__(self, width, height, title):
        self.w, self.h = width, height
        self.parts = []
        self.back_parts = []  # drawn first: phase bands sit behind arrows and labels
        self.title = tr(title)

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=13, anchor="middle", color=INK, mono=False, weight="normal",
             italic=False, halo=False, translated=False):
        if LANG != "en" and mono and s in ZH:
            s, mono = ZH[s], False  # a monospace label with words in it: "n bytes"
        elif not (mono or translated):
            s = tr(s)
        style = " font-style='italic'" if italic and LANG == "en" else ""
        if halo:
            style += f" paint-order='stroke' stroke='{PAPER}' stroke-width='5'"
        self.add(
            f"<text x='{x}' y='{y}' font-size='{size}' text-anchor='{anchor}' fill='{color}' "
            f"font-weight='{weight}'{style} {MONO if mono else FONTS[LANG]}>{escape(s)}</text>"
        )

    def rect(self, x, y, w, h, fill, stroke="none", rx=0, opacity=1.0, back=False):
        (self.back_parts.append if back else self.add)(
            f"<rect x='{x}' y='{y}' width='{w}' height='{h}' rx='{rx}' fill='{fill}' "
            f"stroke='{stroke}' opacity='{opacity}'/>"
        )

    def line(self, x1, y1, x2, y2, color=INK, width=1.6, dashed=False, arrow=True):
        dash = " stroke-dasharray='6 4'" if dashed else ""
        head = " marker-end='url(#head)'" if arrow else ""
        self.add(
            f"<line x1='{x1}' y1='{y1}' x2='{x2}' y2='{y2}' stroke='{color}' "
            f"stroke-width='{width}'{dash}{head}/>"
        )

    def render(self):
        head = (
            f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {self.w} {self.h}' "
            f"width='{self.w}' height='{self.h}' role='img' aria-label='{escape(self.title)}'>\n"
            f"<title>{escape(self.title)}</title>\n"
            "<defs><marker id='head' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='8' "
            f"markerHeight='8' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' "
            f"fill='{INK}'/></marker></defs>\n"
            f"<rect x='1' y='1' width='{self.w - 2}' height='{self.h - 2}' rx='10' "
            f"fill='{PAPER}' stroke='#cfcab8'/>\n"
        )
        return head + "\n".join(self.back_parts + self.parts) + "\n</svg>\n"


class Timeline(Svg):
    """One model, one input operation: the two lanes and the two phases."""

    def __init__(self, height, title, caption):
        super().__init__(W, height, title)
        self.text(W / 2, 28, title, size=16, weight="bold")
        self.text(APP_X, 56, "your process", size=13, weight="bold")
        self.text(KER_X + 60, 56, "kernel", size=13, weight="bold")
        # time axis
        self.line(40, 70, 40, height - 48, color=SOFT, width=1.2)
        self.add(
            f"<text x='30' y='{(70 + height - 48) / 2}' font-size='12' fill='{SOFT}' "
            f"text-anchor='middle' transform='rotate(-90 30 {(70 + height - 48) / 2})' "
            f"{FONTS[LANG]}>{tr('time')}</text>"
        )
        self.text(W / 2, height - 14, caption, size=12, color=SOFT, italic=True)
        legend(self, height - 38)
        self.kernel_line = []

    def phase(self, y1, y2, which, label=None):
        fill = WAIT if which == "wait" else COPY
        default = "(1) waiting for data" if which == "wait" else "(2) copying data to the process"
        self.rect(BAND_L, y1, BAND_R - BAND_L, y2 - y1, fill, rx=6, back=True)
        self.text(BAND_R - 8, y1 + 16, label or default, size=11, anchor="end", color=SOFT)

    def life(self, y1, y2, state, label=None):
        color = RUN if state == "run" else BLOCK
        self.rect(APP_X - 7, y1, 14, y2 - y1, color, rx=3)
        if label is None:
            label = "runs" if state == "run" else "blocked"
        if label:
            self.text(APP_X - 16, (y1 + y2) / 2 + 4, label, size=12, anchor="end",
                      color=color, weight="bold")

    def call(self, y, label):
        self.line(APP_X + 9, y, KER_X - 2, y)
        self.text((APP_X + KER_X) / 2, y - 6, label, size=12, mono=True, halo=True)

    def back(self, y, label, color=INK):
        self.line(KER_X - 2, y, APP_X + 9, y, dashed=True, color=color)
        self.text((APP_X + KER_X) / 2, y - 6, label, size=12, mono=True, color=color, halo=True)

    def event(self, y, label):
        self.add(f"<circle cx='{KER_X}' cy='{y}' r='5' fill='{INK}'/>")
        self.text(KER_X + 12, y + 4, label, size=12, anchor="start")

    def kernel(self, y1, y2):
        self.line(KER_X, y1, KER_X, y2, color=SOFT, width=1.2, arrow=False)

    def note(self, x, y, s, anchor="start"):
        self.text(x, y, s, size=11, anchor=anchor, color=SOFT, italic=True)


def legend(svg, y):
    x = 70
    for color, label in [(RUN, "process runs"), (BLOCK, "process blocked"),
                         (WAIT, "(1) wait for data"), (COPY, "(2) copy to the process")]:
        svg.rect(x, y - 10, 14, 12, color, rx=2)
        svg.text(x + 20, y, label, size=11, anchor="start")
        x += 150


def blocking():
    s = Timeline(440, "Blocking I/O: one call, blocked through both phases",
                 "The process sleeps from the call until the bytes are in its buffer.")
    s.kernel(80, 380)
    s.life(80, 110, "run")
    s.call(110, "read(fd, buf)")
    s.life(110, 330, "block")
    s.phase(115, 260, "wait")
    s.note(KER_X + 12, 150, "no data yet: the thread sleeps")
    s.event(240, "data arrives")
    s.phase(260, 325, "copy")
    s.back(330, "n bytes")
    s.life(330, 380, "run")
    return s


def nonblocking():
    s = Timeline(520, "Non-blocking I/O: ask, ask again, ... then copy",
                 "Phase 1 costs CPU instead of sleep; phase 2 still happens inside the call.")
    s.kernel(80, 450)
    s.life(80, 110, "run")
    s.call(110, "read(fd, buf)")
    s.back(130, "EAGAIN", color=BLOCK)
    s.life(110, 160, "run", "")
    s.call(160, "read(fd, buf)")
    s.back(180, "EAGAIN", color=BLOCK)
    s.life(160, 210, "run", "runs, and spins")
    s.call(210, "read(fd, buf)")
    s.back(230, "EAGAIN", color=BLOCK)
    s.phase(100, 300, "wait")
    s.life(210, 320, "run", "")
    s.event(280, "data arrives")
    s.call(320, "read(fd, buf)")
    s.life(320, 400, "block", "blocked (copy)")
    s.phase(325, 395, "copy")
    s.back(400, "n bytes")
    s.life(400, 450, "run")
    return s


def multiplexing():
    s = Timeline(490, "I/O multiplexing: wait on many, then read the ready one",
                 "Blocked twice, but in phase 1 the wait covers every descriptor at once.")
    s.kernel(80, 430)
    s.life(80, 110, "run")
    s.call(110, "select / poll / epoll_wait")
    s.life(110, 260, "block", "blocked in the wait")
    s.phase(115, 255, "wait", "(1) waiting for any of many")
    s.event(235, "data arrives on fd 7")
    s.back(260, "fd 7 is readable")
    s.life(260, 300, "run")
    s.call(300, "read(7, buf)")
    s.life(300, 380, "block", "blocked (copy)")
    s.phase(305, 375, "copy")
    s.back(380, "n bytes")
    s.life(380, 430, "run")
    return s


def sigio():
    s = Timeline(520, "Signal-driven I/O: the kernel signals readiness",
                 "No call waits in phase 1; the signal says 'ready', and read still copies.")
    s.kernel(80, 450)
    s.life(80, 110, "run")
    s.call(110, "fcntl: F_SETOWN, F_SETSIG, O_ASYNC")
    s.back(130, "0 (armed)")
    s.life(110, 265, "run", "free to run")
    s.phase(140, 255, "wait")
    s.event(235, "data arrives")
    s.back(265, "signal: SIGRTMIN+n, si_fd = 7")
    s.call(305, "read(7, buf)")
    s.life(265, 305, "run", "")
    s.life(305, 385, "block", "blocked (copy)")
    s.phase(310, 380, "copy")
    s.back(385, "n bytes")
    s.life(385, 450, "run")
    return s


def aio():
    s = Timeline(490, "Asynchronous I/O: submit, and collect a completion",
                 "Both phases happen without the process: it is told when the bytes are there.")
    s.kernel(80, 430)
    s.life(80, 110, "run")
    s.call(110, "submit: read(fd, buf)")
    s.back(130, "queued")
    s.life(110, 350, "run", "free to run")
    s.phase(140, 270, "wait")
    s.event(250, "data arrives")
    s.phase(270, 330, "copy", "(2) kernel copies into buf")
    s.back(350, "completion: n bytes in buf")
    s.note(APP_X + 20, 375, "(io_uring: a CQE; POSIX AIO: aio_error / a signal)")
    s.life(350, 430, "run")
    return s


def models():
    """The five models side by side: which phases block the process."""
    cols = [
        ("blocking", ["blocked", "blocked"], "read"),
        ("non-blocking", ["spins: read, EAGAIN...", "blocked"], "read"),
        ("multiplexing", ["blocked in select", "blocked"], "select, read"),
        ("signal-driven", ["runs; a signal comes", "blocked"], "fcntl, read"),
        ("asynchronous", ["runs", "runs"], "submit, reap"),
    ]
    s = Svg(760, 440, "The five I/O models compared")
    s.text(380, 30, "The five I/O models: where the process is blocked", size=16, weight="bold")
    top, ph1, ph2 = 100, 150, 90
    s.text(70, top + ph1 / 2, "(1) wait", size=13, weight="bold")
    s.text(70, top + ph1 / 2 + 18, "for data", size=13, weight="bold")
    s.text(70, top + ph1 + ph2 / 2, "(2) copy", size=13, weight="bold")
    s.text(70, top + ph1 + ph2 / 2 + 18, "to process", size=13, weight="bold")
    s.rect(130, top, 620, ph1, WAIT, rx=6)
    s.rect(130, top + ph1 + 4, 620, ph2 - 4, COPY, rx=6)
    x0, cw = 135, 122
    for i, (name, states, calls) in enumerate(cols):
        cx = x0 + i * cw + cw / 2
        s.text(cx, 70, name, size=13, weight="bold")
        s.text(cx, 88, calls, size=11, mono=True, color=SOFT)
        for j, state in enumerate(states):
            y1 = top + 10 if j == 0 else top + ph1 + 12
            y2 = top + ph1 - 10 if j == 0 else top + ph1 + ph2 - 8
            blocked = state.startswith("blocked")
            color = BLOCK if blocked else RUN
            s.rect(cx - 8, y1, 16, y2 - y1, color, rx=3)
            lines = wrap(tr(state))
            # the label beside the bar
            for k, ln in enumerate(lines):
                s.text(cx + 12, (y1 + y2) / 2 + 4 + 13 * (k - (len(lines) - 1) / 2), ln,
                       size=10.5, anchor="start", color=color, translated=True)
    y = top + ph1 + ph2 + 30
    s.line(135, y, 135 + 4 * cw - 6, y, arrow=False, color=INK)
    s.line(135 + 4 * cw + 6, y, 135 + 5 * cw - 4, y, arrow=False, color=INK)
    s.text(135 + 2 * cw, y + 18, "synchronous: the copy blocks the caller (POSIX)", size=12)
    s.text(135 + 4.5 * cw, y + 18, "asynchronous", size=12)
    legend(s, 420)
    return s


def wrap(label):
    """`label` in lines of about 12 columns (a Chinese character is two)."""
    if LANG != "en":  # break between characters, but never inside a word of Latin letters
        lines, cur, width = [], "", 0
        for piece in re.findall(r"[A-Za-z0-9_+]+|.", label):
            w = sum(1 if ord(c) < 128 else 2 for c in piece)
            if width + w > 12 and cur:
                lines.append(cur.strip())
                cur, width = "", 0
            cur, width = cur + piece, width + w
        return lines + [cur.strip()]
    lines, cur = [], ""
    for w in label.split(" "):
        if len(cur) + len(w) > 12 and cur:
            lines.append(cur)
            cur = w
        else:
            cur = (cur + " " + w).strip()
    lines.append(cur)
    return lines


def level_edge():
    """What epoll_wait reports for one socket, level-triggered vs edge-triggered."""
    s = Svg(W, 400, "Level-triggered vs edge-triggered epoll")
    s.text(W / 2, 28, "Level vs edge: the same bytes, two ways of reporting them", size=16,
           weight="bold")
    left, right = 150, 650
    # the receive buffer level over time
    base = 150
    s.text(20, base - 30, "bytes in the", size=12, anchor="start")
    s.text(20, base - 15, "receive buffer", size=12, anchor="start")
    pts = [(left, base), (220, base), (220, base - 50), (300, base - 50), (300, base - 30),
           (390, base - 30), (390, base - 70), (490, base - 70), (490, base), (right, base)]
    path = " ".join(f"{'M' if i == 0 else 'L'}{x},{y}" for i, (x, y) in enumerate(pts))
    s.add(f"<path d='{path} L{right},{base} L{left},{base} z' fill='{WAIT}' stroke='none'/>")
    s.add(f"<path d='{path}' fill='none' stroke='{INK}' stroke-width='1.8'/>")
    s.text(220, base + 18, "2 KiB arrive", size=11, color=SOFT)
    s.text(300, base + 18, "read 1 KiB", size=11, color=SOFT)
    s.text(390, base + 18, "1 KiB more", size=11, color=SOFT)
    s.text(490, base + 18, "read to EAGAIN", size=11, color=SOFT)
    waits = [180, 250, 340, 430, 520, 600]
    for row, (name, hits, y) in enumerate([
        ("level-triggered", [250, 340, 430], 230),
        ("edge-triggered", [250, 430], 300),
    ]):
        s.text(20, y + 4, name, size=12, anchor="start", weight="bold")
        s.line(left, y, right, y, color=SOFT, width=1, arrow=False)
        for x in waits:
            hit = x in hits
            color = RUN if hit else SOFT
            s.add(f"<circle cx='{x}' cy='{y}' r='{7 if hit else 4}' fill='{color}'/>")
    s.text(W / 2, 265, "reported on every epoll_wait while bytes remain", size=11, color=RUN)
    s.text(340, 318, "1 KiB left, unreported", size=10.5, color=BLOCK)
    s.text(W / 2, 340, "reported once per arrival: read until EAGAIN, or the rest waits",
           size=11, color=BLOCK)
    s.add(f"<circle cx='80' cy='370' r='6' fill='{RUN}'/>")
    s.text(92, 374, "epoll_wait reports the socket", size=11, anchor="start")
    s.add(f"<circle cx='330' cy='370' r='4' fill='{SOFT}'/>")
    s.text(342, 374, "epoll_wait does not report it", size=11, anchor="start")
    return s


def main():
    global LANG
    for LANG, out in [("en", OUT), ("zh-CN", OUT / "zh-CN")]:
        out.mkdir(parents=True, exist_ok=True)
        for name, make in [("blocking", blocking), ("nonblocking", nonblocking),
                           ("multiplexing", multiplexing), ("sigio", sigio), ("aio", aio),
                           ("models", models), ("level-edge", level_edge)]:
            (out / f"{name}.svg").write_text(make().render())
            print(f"wrote {out / name}.svg")


if __name__ == "__main__":
    main()
