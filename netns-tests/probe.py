#!/usr/bin/env python3
"""Sequence-numbered UDP probe stream, to prove that no data packet is lost.

  probe.py send --to ADDR:PORT --rate 200 --duration 30 [--stop-file F]
                [--start-at UNIX_TIME]
  probe.py recv --bind ADDR:PORT --duration 35 --sent-file SENT_FILE
  probe.py outages --rate 200 --label "n1 up" [--bound MS] [--max-runs K]
                   [--all-received] [--at] RECV_JSON [RECV_JSON...]

The sender prints one JSON line {"sent": N, "start": T} (T: the wall-clock
time of packet 0). With --start-at, packet K leaves at UNIX_TIME + K/rate on
the wall clock: senders on several hosts of one clock (two hubs that hand a
service address over) then send the same sequence numbers at the same times,
and a receiver sees one stream from whichever can send; a send that fails
(no route: the host does not hold the address) is skipped. The receiver stops after the duration and prints
{"received": R, "missing": [...], "duplicates": D, "start": T} where
missing lists every sequence number below the highest one it saw (or below
"sent" from --sent-file) that did not arrive.

outages reads one stream's receiver reports (one per place it may arrive:
two hubs sharing a service address): a packet is lost when it is missing
from every one. Prints "LABEL: expected=E received=R1/R2.. lost=L
outages_ms=[...]" (each run of consecutive lost sequence numbers, in ms at
--rate; with --at also when each began, in ms into the stream and, when the
sender's start is known, as a UTC time) and exits 1 when nothing was expected, an outage exceeds --bound,
there are more than --max-runs runs, or (--all-received) a receiver got
nothing.
"""
import argparse
import json
import os
import socket
import struct
import sys
import time


def addr(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def send(a):
    host, port = addr(a.to)
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    interval = 1.0 / a.rate
    n = int(a.rate * a.duration)
    start = time.monotonic()
    wall = time.time()
    if a.start_at is not None:
        start += a.start_at - wall
        wall = a.start_at
    sent = 0
    for seq in range(n):
        # At most one check per 10 packets: a stat per packet would slow
        # a fast stream in UML.
        if a.stop_file and seq % 10 == 0 and os.path.exists(a.stop_file):
            break
        target = start + seq * interval
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            s.sendto(struct.pack("!Q", seq) + b"x" * 56, (host, port))
        except OSError:
            pass  # counted as missing by the receiver
        sent += 1
    print(json.dumps({"sent": sent, "start": wall}))


def recv(a):
    host, port = addr(a.bind)
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    # A receiver starved of CPU (other UML guests on the host) must not drop
    # probes in its own socket buffer: that would count as data lost that
    # rotor never lost. SO_RCVBUF is capped by net.core.rmem_max (~208 KiB);
    # SO_RCVBUFFORCE (root, as here) is not: 16 MiB holds ~40 s of a
    # 200 packets/s stream.
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.bind((host, port))
    if a.ready_file:
        open(a.ready_file, "w").close()  # the sender waits for this: no start-up race
    seen = set()
    dups = 0
    # Stop when the sender has finished (its --sent-file exists) and nothing
    # arrived for a second; --duration is only a hard cap (x3).
    end = time.monotonic() + a.duration * 3
    last = time.monotonic()
    while time.monotonic() < end:
        s.settimeout(0.2)
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            done = a.sent_file and os.path.exists(a.sent_file)
            if (done or not a.sent_file) and time.monotonic() - last > (1.0 if done else a.duration):
                break
            continue
        last = time.monotonic()
        if len(data) < 8:
            continue
        (seq,) = struct.unpack("!Q", data[:8])
        if seq in seen:
            dups += 1
        seen.add(seq)
    total = max(seen) + 1 if seen else 0
    began = None
    if a.sent_file:
        for _ in range(50):
            try:
                with open(a.sent_file) as f:
                    d = json.loads(f.read())
                total, began = d["sent"], d.get("start")
                break
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
    missing = [i for i in range(total) if i not in seen]
    print(json.dumps({"received": len(seen), "expected": total, "missing": missing, "duplicates": dups, "start": began}))


def runs(lost):
    """Runs of consecutive numbers in the sorted list lost, as (first, last)."""
    out, start, prev = [], None, None
    for s in lost:
        if prev is None or s != prev + 1:
            if start is not None:
                out.append((start, prev))
            start = s
        prev = s
    if start is not None:
        out.append((start, prev))
    return out


def outages(a):
    reports = [json.load(open(f)) for f in a.reports]
    expected = max(r["expected"] for r in reports)
    lost = sorted(set.intersection(*(set(r["missing"]) for r in reports)))
    found = runs(lost)
    ms = [round((y - x + 1) * 1000 / a.rate) for x, y in found]
    got = "/".join(str(r["received"]) for r in reports)
    at = ""
    if a.at:
        at = f" at_ms={[round(x * 1000 / a.rate) for x, _ in found]}"
        began = reports[0].get("start")
        if began is not None:
            at += " at=" + ",".join(
                time.strftime("%H:%M:%S", time.gmtime(began + x / a.rate)) + f".{int((began + x / a.rate) % 1 * 1000):03d}Z"
                for x, _ in found
            )
    print(f"  {a.label}: expected={expected} received={got} lost={len(lost)} outages_ms={ms}{at}")
    bad = expected == 0
    bad |= a.bound is not None and any(m > a.bound for m in ms)
    bad |= a.max_runs is not None and len(found) > a.max_runs
    bad |= a.all_received and any(r["received"] == 0 for r in reports)
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("send")
    ps.add_argument("--to", required=True)
    ps.add_argument("--rate", type=float, default=200)
    ps.add_argument("--duration", type=float, default=30)
    ps.add_argument("--stop-file", help="stop early once this file exists (--duration is then a cap)")
    ps.add_argument("--start-at", type=float, help="wall-clock time (s since the epoch) of packet 0")
    pr = sub.add_parser("recv")
    pr.add_argument("--bind", required=True)
    pr.add_argument("--duration", type=float, default=35)
    pr.add_argument("--sent-file")
    pr.add_argument("--ready-file")
    po = sub.add_parser("outages")
    po.add_argument("--rate", type=float, required=True)
    po.add_argument("--label", required=True)
    po.add_argument("--bound", type=float)
    po.add_argument("--max-runs", type=int)
    po.add_argument("--all-received", action="store_true")
    po.add_argument("--at", action="store_true", help="also print when each outage began (ms into the stream)")
    po.add_argument("reports", nargs="+")
    a = p.parse_args()
    if a.cmd == "outages":
        return outages(a)
    send(a) if a.cmd == "send" else recv(a)


if __name__ == "__main__":
    sys.exit(main())
