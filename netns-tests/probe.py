#!/usr/bin/env python3
"""Sequence-numbered UDP probe stream, to prove that no data packet is lost.

  probe.py send --to ADDR:PORT --rate 200 --duration 30
  probe.py recv --bind ADDR:PORT --duration 35 --expect-from-file SENT_FILE

The sender prints one JSON line {"sent": N}. The receiver stops after the
duration and prints {"received": R, "missing": [...], "duplicates": D} where
missing lists every sequence number below the highest one it saw (or below
"sent" from --sent-file) that did not arrive.
"""
import argparse
import json
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
    sent = 0
    for seq in range(n):
        target = start + seq * interval
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            s.sendto(struct.pack("!Q", seq) + b"x" * 56, (host, port))
        except OSError:
            pass  # counted as missing by the receiver
        sent += 1
    print(json.dumps({"sent": sent}))


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
    import os
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
    if a.sent_file:
        for _ in range(50):
            try:
                with open(a.sent_file) as f:
                    total = json.loads(f.read())["sent"]
                break
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
    missing = [i for i in range(total) if i not in seen]
    print(json.dumps({"received": len(seen), "expected": total, "missing": missing, "duplicates": dups}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("send")
    ps.add_argument("--to", required=True)
    ps.add_argument("--rate", type=float, default=200)
    ps.add_argument("--duration", type=float, default=30)
    pr = sub.add_parser("recv")
    pr.add_argument("--bind", required=True)
    pr.add_argument("--duration", type=float, default=35)
    pr.add_argument("--sent-file")
    pr.add_argument("--ready-file")
    a = p.parse_args()
    send(a) if a.cmd == "send" else recv(a)


if __name__ == "__main__":
    sys.exit(main())
