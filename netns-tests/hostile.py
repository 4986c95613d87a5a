#!/usr/bin/env python3
"""Hostile control traffic for S6.

  hostile.py capture --iface veth0 --port 4820 --seconds 3 --out FILE
      records genuine control datagrams seen on the interface (AF_PACKET)
  hostile.py attack --to ADDR:PORT --samples FILE --count N --seed S
      sends random, truncated, bit-flipped, forged and replayed datagrams;
      prints {"sent": N}
"""
import argparse, json, random, socket, struct, sys, time

# Control protocol version (docs/protocol.md): forged datagrams carry it so
# they get past the version check to the length and authentication checks.
VERSION = 2


def capture(a):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.bind((a.iface, 0))
    s.settimeout(0.2)
    out, end = [], time.monotonic() + a.seconds
    while time.monotonic() < end:
        try:
            frame = s.recv(4096)
        except socket.timeout:
            continue
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        udp = ip[ihl:]
        sport, dport = struct.unpack("!HH", udp[:4])
        if a.port in (sport, dport) and len(udp) > 8:
            out.append(udp[8:].hex())
    json.dump(out, open(a.out, "w"))
    print(json.dumps({"captured": len(out)}))


def attack(a):
    rnd = random.Random(a.seed)
    # Without samples: a hello-sized datagram (protocol version 2: 73 bytes).
    samples = [bytes.fromhex(h) for h in json.load(open(a.samples))] or [bytes([VERSION, 1]) + bytes(71)]
    host, _, port = a.to.rpartition(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for k in range(a.count):
        base = rnd.choice(samples)
        kind = k % 5
        if kind == 0:
            d = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 200)))
            if len(d) > 2 and rnd.random() < 0.5:
                d = bytes([VERSION, rnd.randrange(1, 5)]) + d[2:]
        elif kind == 1:
            d = base[: rnd.randrange(0, len(base))]
        elif kind == 2:
            b = bytearray(base)
            i = rnd.randrange(len(b) * 8)
            b[i // 8] ^= 1 << (i % 8)
            d = bytes(b)
        elif kind == 3:
            d = base[:16] + bytes(rnd.getrandbits(8) for _ in range(len(base) - 16))
        else:
            d = base
        s.sendto(d, (host, int(port)))
        time.sleep(0.002)
    print(json.dumps({"sent": a.count}))


p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
sub = p.add_subparsers(dest="cmd", required=True)
c = sub.add_parser("capture")
c.add_argument("--iface", required=True)
c.add_argument("--port", type=int, default=4820)
c.add_argument("--seconds", type=float, default=3)
c.add_argument("--out", required=True)
t = sub.add_parser("attack")
t.add_argument("--to", required=True)
t.add_argument("--samples", required=True)
t.add_argument("--count", type=int, default=1000)
t.add_argument("--seed", type=int, default=1)
a = p.parse_args()
capture(a) if a.cmd == "capture" else attack(a)
