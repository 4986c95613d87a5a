#!/usr/bin/env python3
"""Counts the frames on an interface for --seconds (AF_PACKET, both
directions): ESP packets, and plaintext UDP packets to a destination port in
--ports LO-HI (the probe streams), except those with the control port
(--control-port, 4820) at either end: control datagrams and ESP in UDP, whose
other end behind a NAT may be any port, the probes' included. Prints one JSON
line
{"esp": E, "plain_probe": P, "frames": F, "plain_frames": [hex...]}.

Run it on the wire itself (a bridge port in the "lan" namespace), not on an
IPsec host's own interface: on the host, decapsulated tunnel-mode packets are
re-injected on the outer interface and a packet tap sees them there in clear.

  wire_check.py --iface p0 --seconds 10 --ports 5000-6000 [--stop-file F]

(--seconds is then a cap: it stops once F exists.)
"""
import argparse, json, os, socket, struct, time

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iface", required=True)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--ports", default="5000-6000")
    p.add_argument("--control-port", type=int, default=4820)
    p.add_argument("--stop-file", help="stop early once this file exists (checked every 0.2 s)")
    a = p.parse_args()
    lo, hi = (int(x) for x in a.ports.split("-"))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.bind((a.iface, 0))
    s.settimeout(0.2)
    esp = plain = frames = 0
    leaks = []  # the first clear probe frames, hex, to tell what leaked
    end = time.monotonic() + a.seconds
    checked = time.monotonic()
    while time.monotonic() < end:
        if a.stop_file and time.monotonic() - checked >= 0.2:
            checked = time.monotonic()
            if os.path.exists(a.stop_file):
                break
        try:
            frame, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if len(frame) < 14:
            continue
        frames += 1
        ethertype = frame[12:14]
        ip = frame[14:]
        if ethertype == b"\x08\x00" and len(ip) >= 20:
            proto, l4 = ip[9], ip[(ip[0] & 0x0F) * 4:]
        elif ethertype == b"\x86\xdd" and len(ip) >= 40:
            proto, l4 = ip[6], ip[40:]
        else:
            continue
        if proto == 50:
            esp += 1
        elif (
            proto == 17
            and len(l4) >= 4
            and lo <= struct.unpack("!H", l4[2:4])[0] <= hi
            and a.control_port not in struct.unpack("!HH", l4[0:4])
        ):
            plain += 1
            if len(leaks) < 5:
                leaks.append(frame[:80].hex())
    print(json.dumps({"esp": esp, "plain_probe": plain, "frames": frames, "plain_frames": leaks}))


if __name__ == "__main__":
    main()
