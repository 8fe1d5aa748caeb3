#!/usr/bin/env python3
"""Writes the Chinese copies of the measurements, docs/src/measurements/zh-CN/, from the English.

    python3 docs/measurements-zh.py          (docs/build --update-po runs it; docs/build checks it)

`bench report` writes its tables (*.md) and plots (*.svg) into docs/src/measurements/ in English.
The Chinese edition includes and shows the copies in zh-CN/, which this script makes by
translating every sentence, table heading and plot label that bench writes, numbers kept as
they are. Server names (`epoll`, `aio (io_uring)`) and code stay as they are. A sentence or
label it does not know stops it with the text to add below, so a change to bench's wording
cannot leave English in the Chinese pages unnoticed.

With --check it writes nothing and fails if the copies are not what it would write.
"""

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "src" / "measurements"
OUT = HERE / "zh-CN"

# Whole lines (or a table's heading cells) of bench's markdown, as patterns. Groups keep numbers.
LINES = [
    (r"Measured on (.+):", r"测量日期：\1"),
    (r"- CPU: (.+) \((\d+) cores available\)", r"- CPU：\1（可用 \2 核）"),
    (r"- memory: (.+) GiB", r"- 内存：\1 GiB"),
    (r"- kernel: (.+)", r"- 内核：\1"),
    (
        r"- load: (\d+) active connections doing closed-loop round trips of (\d+) bytes for (\S+) s "
        r"per cell, beside 0 to (\S+) idle connections; CPU at idle measured over (\S+) s; the busy "
        r"table, (\d+) connections of (\d+) bytes and none idle; one load-generator thread on "
        r"epoll, on the same machine",
        r"- 负载：\1 个活跃连接做 \2 字节的闭环往返，每格 \3 秒，旁边另有 0 到 \4 个空闲连接；"
        r"空闲时的 CPU 在 \5 秒内测量；繁忙表是 \6 个 \7 字节的连接，没有空闲连接；"
        r"负载生成器是同一台机器上的一个 epoll 线程",
    ),
    (
        r"Every figure comes from one command: (`[^`]+`)\. Expect a few percent of noise between "
        r"runs, more on a busy machine; the shapes of the curves, not the third digit, are the "
        r"result\.",
        r"每个数字都来自一条命令：\1。两次运行之间会有百分之几的噪声，机器繁忙时更多；"
        r"结论是曲线的形状，而不是第三位数字。",
    ),
    (r"Limits:", r"限制："),
    (r"Not measured:", r"未测量："),
    (
        r"- select: at most ~(\S+) idle, since descriptors past FD_SETSIZE \((\d+)\) are refused",
        r"- select：最多约 \1 个空闲连接，因为超过 FD_SETSIZE（\2）的描述符会被拒绝",
    ),
    (
        r"- aio \(POSIX AIO\): at most (\S+) idle, since each idle client holds one of glibc's "
        r"helper threads \((`--threads`) allows at most (\S+)\)",
        r"- aio (POSIX AIO)：最多 \1 个空闲连接，因为每个空闲客户端都占着一个 glibc 辅助线程"
        r"（\2 最多允许 \3 个）",
    ),
    (
        r"- (.+) with (\S+) idle failed, so it was not run with more: (.+)",
        r"- \1 在 \2 个空闲连接时失败，所以没有再用更多连接运行：\3",
    ),
    (
        r"- (.+) \(skipped: the server did not start\)",
        r"- \1（跳过：服务器没有启动）",
    ),
    (
        r"- blocking (`--mode single`) and (`--mode pool`): they serve one client, or "
        r"(`--workers`) clients, at a time, so idle connections would hold the only threads and "
        r"the active ones would wait for ever; that is their lesson, and no throughput can be "
        r"measured beside it",
        r"- blocking \1 和 \2：它们一次只服务一个客户端或 \3 个客户端，空闲连接会占住仅有的"
        r"线程，活跃连接就会永远等下去；这正是它们要讲的道理，旁边测不出任何吞吐量",
    ),
    (
        r"- blocking (`--mode fork`): a process per idle connection is the thread model again, "
        r"with thousands of processes; its cost per client is shown by the thread mode",
        r"- blocking \1：每个空闲连接一个进程，又是线程模型，只是换成了成千上万个进程；"
        r"它每个客户端的代价由线程模式来展示",
    ),
    (
        r"- selectors-chat: a chat room broadcasts each line to the other clients, so it is not "
        r"an echo server \(its (`--echo`) mode runs on the same epoll as the epoll chapter\)",
        r"- selectors-chat：聊天室把每一行广播给其他客户端，所以它不是回显服务器（它的 \1 "
        r"模式运行在与 epoll 一章相同的 epoll 上）",
    ),
    (
        r"CPU seconds for (\S+) monitoring operations with N descriptors watched and one, chosen "
        r"at random, ready each time \(the method of Kerrisk's table 63-9\)\. Left: this "
        r"machine\. Right: Kerrisk's published numbers \(Linux 2\.6\.25, 2008 hardware\)\.",
        r"监视 N 个描述符、每次随机选一个就绪时，\1 次监视操作所用的 CPU 秒数"
        r"（Kerrisk 表 63-9 的方法）。左边：本机。右边：Kerrisk 发表的数字"
        r"（Linux 2.6.25，2008 年的硬件）。",
    ),
    (
        r"From N = (\S+) to N = (\S+), select grew (\S+)×, poll (\S+)×, epoll (\S+)×\. The watched "
        r"descriptors are eventfds \(one descriptor each; (\S+) pipes would need (\S+)\)\. select "
        r"past (\S+) uses a heap-allocated descriptor bitmap: FD_SETSIZE limits glibc's "
        r"(`fd_set`), not the kernel\. For N > (\S+), select and poll ran fewer operations "
        r"\((.+?)\) and were scaled to (\S+)\.",
        r"从 N = \1 到 N = \2，select 增长了 \3 倍，poll \4 倍，epoll \5 倍。被监视的描述符是 "
        r"eventfd（每个一个描述符；\6 个管道需要 \7 个）。超过 \8 的 select 使用堆上分配的描述符"
        r"位图：FD_SETSIZE 限制的是 glibc 的 \9，而不是内核。N > \10 时，select 和 poll 做的"
        r"操作更少（\11），再按比例换算到 \12 次。",
    ),
    (
        r"Round trips per second with (\d+) active connections, against the number of idle "
        r"connections held open beside them \((\d+)-byte requests, every reply checked\):",
        r"\1 个活跃连接每秒的往返次数，对应旁边保持打开的空闲连接数（\2 字节的请求，"
        r"每个回复都经过检查）：",
    ),
    (r"Latency of one round trip, p50 / p99 in µs:", r"一次往返的延迟，p50 / p99，单位 µs："),
    (
        r"Round trips per second of (\d+) clients \(one line each, closed loop\) against one loop "
        r"and two, (\S+) s per cell\. CPU as a share of one core; the load generator runs on the "
        r"same (\d+) cores as the server:",
        r"\1 个客户端（每个一行，闭环）每秒的往返次数，一个循环对比两个循环，每格 \2 秒。CPU 为"
        r"占一个核的比例；负载生成器和服务器运行在同样的 \3 个核上：",
    ),
    (
        r"At (\S+) µs a line, two loops did (\S+)× the round trips of one\.",
        r"每行 \1 µs 时，两个循环的往返次数是一个循环的 \2 倍。",
    ),
    (
        r"Round-trip latency of (\d+) light clients \(one line every (\d+) ms each\) beside one "
        r"heavy client \(batches of (\d+) lines\), against the CPU each line costs the server's "
        r"handler; (\S+) s per cell\. p50 / p99 / max in µs, then the heavy client's lines per "
        r"second:",
        r"\1 个轻量客户端（每个每 \2 毫秒一行）在一个繁重客户端（每批 \3 行）旁边的往返延迟，"
        r"对应服务器处理函数处理每行所花的 CPU；每格 \4 秒。p50 / p99 / max 单位为 µs，最后是繁重"
        r"客户端每秒的行数：",
    ),
    (
        r"Server CPU per round trip, in µs: the server's own threads \(for SQPOLL, the kernel's "
        r"polling thread (`[^`]+`) apart, its CPU seconds in brackets\):",
        r"每次往返的服务器 CPU，单位 µs：服务器自己的线程（对 SQPOLL 来说，内核的轮询线程 \1 "
        r"单独计算，它的 CPU 秒数在括号里）：",
    ),
    (
        r"System calls per round trip, counted by (`[^`]+`) \(every thread\): (\d+) clients each "
        r"making (\S+) lockstep round trips of (\d+) bytes, beside (\S+) idle connections, minus "
        r"the same session without round trips\. The last column compares the server's own count "
        r"\(its summary's accept/read/write calls and wake-ups, or io_uring_enter calls\) with "
        r"strace's count of those calls, per round trip\.",
        r"每次往返的系统调用数，由 \1 统计（所有线程）：\2 个客户端各做 \3 次 \4 字节的步调一致的"
        r"往返，旁边有 \5 个空闲连接，再减去不做往返的同样一次会话。最后一列把服务器自己的计数"
        r"（它总结里的 accept/read/write 调用数和唤醒次数，或 io_uring_enter 调用数）与 strace 对"
        r"这些调用的计数相比较，按每次往返计。",
    ),
    (
        r"(\d+) connections, each sending (\d+) B as soon as its last reply is back, no idle ones: "
        r"round trips per second; for each round trip, the server's own CPU \(SQPOLL's kernel "
        r"thread apart\) and the (`io_uring_enter`) calls \(enters\) the server counted; that "
        r"thread's CPU; and the load generator's share of a core:",
        r"\1 个连接，每个在上一个回复回来后立刻发送 \2 B，没有空闲连接：每秒往返次数；每次往返"
        r"服务器自己的 CPU（SQPOLL 的内核线程单独计算）和服务器自己统计的 \3 调用数（enter 数）；那个线程的 "
        r"CPU；以及负载生成器占一个核的比例：",
    ),
    (
        r"Server CPU under load, share of one core \(the load generator's own share in brackets; "
        r"it runs on the other core\):",
        r"负载下服务器的 CPU 占一个核的比例（括号里是负载生成器自己的比例；它在另一个核上"
        r"运行）：",
    ),
    (
        r"Server CPU while every connection sits silent, as a share of one core \(the busy loop "
        r"asks every socket again and again; the others sleep in the kernel until something "
        r"happens\):",
        r"所有连接都沉默时服务器的 CPU，占一个核的比例（忙循环一遍遍地询问每个套接字；"
        r"其他模型睡在内核里，直到有事发生）：",
    ),
    (
        r"Server memory with the most idle connections each model was run with: resident set "
        r"\(RSS\) at start and with every connection open, the difference per connection, and "
        r"threads\. RSS counts the process's own memory \(thread stacks, buffers\); the kernel's "
        r"socket buffers and per-thread kernel stacks come on top and are not in it\.",
        r"每种模型在它运行过的最多空闲连接数下的服务器内存：启动时和所有连接都打开时的常驻"
        r"内存（RSS）、每个连接的差值，以及线程数。RSS 只计算进程自己的内存（线程栈、缓冲区）；"
        r"内核的套接字缓冲区和每个线程的内核栈另外计算，不在其中。",
    ),
]

# Table heading cells and plot labels, whole.
WORDS = {
    "server \\ idle connections": "服务器 \\ 空闲连接数",
    "server": "服务器",
    "connections": "连接数",
    "RSS at start (KiB)": "启动时 RSS (KiB)",
    "RSS (KiB)": "RSS (KiB)",
    "KiB per connection": "每个连接的 KiB",
    "threads": "线程数",
    "N watched": "监视数 N",
    "CPU seconds per 100,000 readiness calls": "每 100,000 次就绪调用的 CPU 秒数",
    "descriptors watched (N)": "被监视的描述符数 (N)",
    "CPU seconds": "CPU 秒数",
    "idle connections held open": "保持打开的空闲连接数",
    "idle connections held open (0, then a log scale)": "保持打开的空闲连接数（0，之后为对数刻度）",
    "round trips per second": "每秒往返次数",
    "Server CPU with every connection silent": "所有连接都沉默时服务器的 CPU",
    "connections held open": "保持打开的连接数",
    "% of one core": "占一个核的 %",
    "blocking --mode thread": "blocking --mode thread",
    "reactor --loops 1": "reactor --loops 1",
    "reactor --loops 2": "reactor --loops 2",
    "reactor --workers 4": "reactor --workers 4",
    "epoll loop (reactor)": "epoll 循环 (reactor)",
    "cost per line (µs)": "每行代价 (µs)",
    "handler cost per line (µs)": "处理函数每行代价 (µs)",
    "generator CPU": "负载生成器 CPU",
    "server CPU": "服务器 CPU",
    "heavy lines/s": "繁重客户端行数/秒",
    "p50": "p50",
    "p99": "p99",
    "max": "max",
    "samples": "样本数",
    "p99 latency of a light client beside a heavy one": "繁重客户端旁边一个轻量客户端的 p99 延迟",
    "p99 round trip (ms)": "p99 往返 (ms)",
    "round trips/s": "往返次数/秒",
    "CPU µs each": "每次 CPU µs",
    "SQ thread (s)": "SQ 线程 (s)",
    "enters each": "每次 enter 数",
    "generator": "负载生成器",
    "System calls per round trip (strace -f -c)": "每次往返的系统调用数（strace -f -c）",
    "system calls per round trip": "每次往返的系统调用数",
    "system calls": "系统调用数",
    "the most frequent (per round trip)": "最频繁的调用（每次往返）",
    "server's own count vs strace's": "服务器自己的计数对比 strace 的",
    "Server memory (RSS) per connection, most connections each server ran with":
        "每个连接的服务器内存 (RSS)，取每个服务器运行过的最多连接数",
}
LABELS = [
    (r"Round trips per second, (\d+) active connections", r"每秒往返次数，\1 个活跃连接"),
    (r"(\w+) \((?:this machine|ours)\)", r"\1（本机）"),
    (r"(\w+) \(Kerrisk, ([\d.]+)\)", r"\1（Kerrisk，\2）"),
]
# A server's name as bench labels it: `epoll`, `aio (io_uring)`, `select (Kerrisk)`.
NAME = re.compile(r"[A-Za-z_-]+( \([^)]*\))?")

missing = []


def prose(text):
    """Does `text` still hold English words (outside code)?"""
    return re.search(r"[A-Za-z]{2,}[ ,;:]+[A-Za-z]{2,}[ ,;:]+[A-Za-z]{2,}", re.sub(r"`[^`]*`", "", text))


def label(text):
    """A plot label or table heading cell, translated."""
    s = text.strip()
    if s in WORDS:
        return text.replace(s, WORDS[s])
    for pattern, replacement in LABELS:
        if re.fullmatch(pattern, s):
            return text.replace(s, re.sub(pattern, replacement, s))
    if re.search("[A-Za-z]", s) and not NAME.fullmatch(s) and not re.fullmatch(r"[\d.,]+", s):
        missing.append(s)
    return text


def markdown(text):
    out = []
    heading = True  # the first row of each table
    for line in text.split("\n"):
        if line.startswith("|"):
            if re.fullmatch(r"\|[\s:|-]+\|", line):
                heading = False
            elif heading:
                line = "|".join(label(cell) for cell in line.split("|"))
            out.append(line)
            continue
        heading = True
        for pattern, replacement in LINES:
            if re.fullmatch(pattern, line):
                line = re.sub(pattern, replacement, line)
                break
        else:
            if not line.startswith("<!--") and prose(line):
                missing.append(line)
        out.append(line)
    return "\n".join(out)


def svg(text):
    return re.sub(
        r"(<text[^>]*>)(.*?)(</text>)",
        lambda m: m.group(1) + label(m.group(2)) + m.group(3),
        text,
        flags=re.S,
    )


def main():
    check = "--check" in sys.argv[1:]
    written = {}
    for path in sorted(HERE.glob("*.md")) + sorted(HERE.glob("*.svg")):
        text = path.read_text(encoding="utf-8")
        written[OUT / path.name] = markdown(text) if path.suffix == ".md" else svg(text)
    if missing:
        print("docs/measurements-zh.py: no Chinese for these, add them to docs/measurements-zh.py:",
              *sorted(set(missing)), sep="\n  ", file=sys.stderr)
        sys.exit(1)
    stale = [p for p, t in written.items() if not p.exists() or p.read_text(encoding="utf-8") != t]
    stale += [p for p in OUT.glob("*") if p not in written]
    if check:
        if stale:
            print("docs/measurements-zh.py: stale:", *stale, sep="\n  ", file=sys.stderr)
            sys.exit(1)
        return
    OUT.mkdir(exist_ok=True)
    for path in OUT.glob("*"):
        if path not in written:
            path.unlink()
    for path, text in written.items():
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(written)} files into {OUT}")


if __name__ == "__main__":
    main()
