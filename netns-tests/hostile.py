#!/usr/bin/env python3
"""Hostile control traffic for S6.

  hostile.py capture --iface veth0 --port 4820 --seconds 3 --out FILE
      records genuine control datagrams seen on the interface (AF_PACKET)
  hostile.py attack --to ADDR:PORT --samples FILE --count N --seed S
      sends random, truncated, bit-flipped, forged and replayed datagrams;
      prints {"sent": N}
  hostile.py flood --to ADDR:PORT --samples FILE --keys K1,K2 --seconds S --seed S
      as fast as one process can for S seconds, in equal shares: inits
      forged under the nodes' real init SPIs (computed from the key files
      here; on the wire anyone reads them from a node's init), datagrams
      under random SPIs, and the captured genuine datagrams replayed;
      prints {"sent": N, "seconds": S}
"""
import argparse, base64, hashlib, hmac, json, os, random, socket, struct, sys, time

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


def init_spi(psk):
    """A node's init SPI (docs/protocol.md §2): HKDF-SHA256 of its key."""
    prk = hmac.new(b"rotor/1 init-spi", psk, hashlib.sha256).digest()
    info = struct.pack(">H", 8) + b"init-spi"
    b = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:4]
    return 0x100 + struct.unpack(">I", b)[0] % (0x80000000 - 0x100)


def flood(a):
    rnd = random.Random(a.seed)
    marker = bytes(4)
    spis = [init_spi(base64.b64decode(open(k).read().split()[0])) for k in a.keys.split(",")]
    replays = [bytes.fromhex(h) for h in json.load(open(a.samples))]
    pool = []
    for k in range(3000):
        kind = k % 3
        if kind == 0:  # init: header, node nonce, body (40), tag
            spi = spis[k % len(spis)]
            d = marker + struct.pack(">BBHIQ", VERSION, 2, 0, spi, 0) + os.urandom(32 + 40 + 16)
        elif kind == 1:  # a hello under a random SPI
            d = marker + struct.pack(">BBHIQ", VERSION, 1, 0, rnd.getrandbits(32) | 0x100, k) + os.urandom(59 + 16)
        else:
            d = rnd.choice(replays) if replays else marker + os.urandom(90)
        pool.append(d)
    host, _, port = a.to.rpartition(":")
    dest = (host, int(port))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sendto, n, start = s.sendto, 0, time.monotonic()
    end = start + a.seconds
    while time.monotonic() < end:
        for d in pool[n % 3000 : n % 3000 + 300]:
            try:
                sendto(d, dest)
            except OSError:
                pass  # a full queue on the way: the next one
        n += 300
    print(json.dumps({"sent": n, "seconds": round(time.monotonic() - start, 2)}))


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
f = sub.add_parser("flood")
f.add_argument("--to", required=True)
f.add_argument("--samples", required=True)
f.add_argument("--keys", required=True)
f.add_argument("--seconds", type=float, default=10)
f.add_argument("--seed", type=int, default=1)
a = p.parse_args()
{"capture": capture, "attack": attack, "flood": flood}[a.cmd](a)
