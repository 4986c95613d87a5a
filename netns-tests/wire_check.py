#!/usr/bin/env python3
"""Counts the frames an interface sends for --seconds (AF_PACKET, outgoing
only): ESP packets, and plaintext UDP packets to a destination port in
--ports LO-HI (the probe streams). Prints one JSON line
{"esp": E, "plain_probe": P, "frames": F}. Outgoing frames are seen after
XFRM, so a probe packet that escaped encryption counts in plain_probe.

  wire_check.py --iface veth0 --seconds 10 --ports 5000-6000
"""
import argparse, json, socket, struct, time

PACKET_OUTGOING = 4


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iface", required=True)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--ports", default="5000-6000")
    a = p.parse_args()
    lo, hi = (int(x) for x in a.ports.split("-"))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.bind((a.iface, 0))
    s.settimeout(0.2)
    esp = plain = frames = 0
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        try:
            frame, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] != PACKET_OUTGOING or len(frame) < 14:
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
        elif proto == 17 and len(l4) >= 4 and lo <= struct.unpack("!H", l4[2:4])[0] <= hi:
            plain += 1
    print(json.dumps({"esp": esp, "plain_probe": plain, "frames": frames}))


if __name__ == "__main__":
    main()
