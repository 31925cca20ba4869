#!/usr/bin/env python3
"""A single trade, hop by hop: where its wall-clock time goes between and
inside the five services, from their system calls.

Run a cluster whose processes were started with `--config CONFIG` (the
five services, as in docs/PERFORMANCE.md), then, while `wrk -t1 -c1
-s docs/wrk/trade.lua` sends one trade at a time:

    python3 docs/wrk/hops.py threads CONFIG > threads.txt
    E=""; for s in recvfrom writev write read pwrite64 sync_file_range; do
      E="$E -e syscalls:sys_enter_$s -e syscalls:sys_exit_$s"; done
    perf record $E -p $(pgrep -d, -f -- "--config CONFIG"),$(pgrep -x wrk) \\
      -o hops.data -- sleep 3
    perf script -i hops.data -F comm,tid,cpu,time,event,trace > hops.txt
    python3 docs/wrk/hops.py segments hops.txt threads.txt

`threads` names every thread of the cluster's processes by its service;
`segments` splits each trade (from one of wrk's requests to the next) at
the system calls that mark a hop and prints each segment's median in µs.
The leader is the replica that receives the front-end's batch; "first
write" is the first `pwrite64` of the service's database after the request
came in (sled writes on threads of its own, named with the process).
"""

import os
import re
import statistics
import sys

SERVICES = ("order-1", "order-2", "order-3")
LINE = re.compile(
    r"^\s*(\S+)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+syscalls:sys_(enter|exit)_(\w+):\s*(.*)$"
)


def threads(config):
    """Prints `tid service` for every thread of the processes started
    with `--config config`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline").read().split("\0")
        except OSError:
            continue
        if config not in argv:
            continue
        binary = os.path.basename(argv[0])
        if binary == "order" and "--id" in argv:
            name = "order-" + argv[argv.index("--id") + 1]
        else:
            name = binary
        for tid in os.listdir(f"/proc/{pid}/task"):
            print(tid, name)


def events(capture, names):
    """(time µs, service, enter|exit, call) of the cluster's and wrk's
    threads, in time order."""
    out = []
    for line in open(capture):
        m = LINE.match(line)
        if not m:
            continue
        comm, tid, _cpu, ts, io, call, _rest = m.groups()
        who = names.get(tid, "wrk" if comm == "wrk" else None)
        if who is not None:
            out.append((float(ts) * 1e6, who, io, call))
    out.sort()
    return out


def segments(capture, thread_file):
    names = dict(line.split() for line in open(thread_file) if line.strip())
    ev = events(capture, names)
    starts = [i for i, e in enumerate(ev) if e[1:] == ("wrk", "enter", "write")]
    found = {}
    for a, b in zip(starts, starts[1:]):
        trade = ev[a:b]

        def first(who, io, call, after=0.0):
            return next(e[0] for e in trade if e[1:] == (who, io, call) and e[0] >= after)

        try:
            t0 = trade[0][0]
            fe_in = first("frontend", "exit", "recvfrom")
            fe_out = first("frontend", "enter", "writev", fe_in)
            received = {s: first(s, "exit", "recvfrom", fe_out) for s in SERVICES}
            leader = min(received, key=received.get)
            followers = [s for s in SERVICES if s != leader]
            ld_in = received[leader]
            ld_out = first(leader, "enter", "writev", ld_in)
            c_in = first("catalog", "exit", "recvfrom", ld_out)
            c_write = first("catalog", "enter", "pwrite64", c_in)
            c_out = first("catalog", "enter", "writev", c_in)
            ld_back = first(leader, "exit", "recvfrom", c_out)
            ld_send = first(leader, "enter", "writev", ld_back)
            ld_write = first(leader, "enter", "pwrite64", ld_back)
            hops = []
            for f in followers:
                f_in = first(f, "exit", "recvfrom", ld_back)
                hops.append((f_in, first(f, "enter", "pwrite64", f_in), first(f, "enter", "writev", f_in)))
            ld_answer = first(leader, "enter", "writev", max(h[2] for h in hops))
            fe_back = first("frontend", "exit", "recvfrom", ld_answer)
            fe_answer = first("frontend", "enter", "writev", fe_back)
            end = first("wrk", "exit", "read", fe_answer)
        except StopIteration:
            continue
        spans = [
            ("a trade", t0, end),
            ("to the front-end", t0, fe_in),
            ("front-end: request in to batch out", fe_in, fe_out),
            ("to the leader", fe_out, ld_in),
            ("leader: batch in to catalog request out", ld_in, ld_out),
            ("to the catalog", ld_out, c_in),
            ("catalog: request in to first write", c_in, c_write),
            ("catalog: first write to answer", c_write, c_out),
            ("to the leader (catalog's answer)", c_out, ld_back),
            ("leader: catalog's answer in to first follower request", ld_back, ld_send),
            ("leader: catalog's answer in to its own first write", ld_back, ld_write),
        ]
        for f_in, f_write, f_out in hops:
            spans += [
                ("to a follower", ld_send, f_in),
                ("follower: request in to first write", f_in, f_write),
                ("follower: first write to answer", f_write, f_out),
            ]
        spans += [
            ("leader: first follower request out to its answer out", ld_send, ld_answer),
            ("to the front-end (leader's answer)", ld_answer, fe_back),
            ("front-end: answer in to answer out", fe_back, fe_answer),
            ("to the caller", fe_answer, end),
        ]
        for name, since, until in spans:
            found.setdefault(name, []).append(until - since)
    if not found:
        sys.exit("no whole trade in the capture (was wrk sending one trade at a time?)")
    for name, values in found.items():
        print(f"{name:56} {statistics.median(values):8.1f} µs  (n={len(values)})")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "threads":
        threads(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "segments":
        segments(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
