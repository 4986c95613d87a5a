"""Writes every XFRM_MSG_MAPPING notification of this network namespace's
kernel to a file, one line each: "TIME SPI OLD_ADDR:PORT NEW_ADDR:PORT".

The kernel sends one for each ESP-in-UDP packet that decrypts on an
inbound SA whose expected source (its address and encap source port)
differs from the packet's: a NAT gave the peer a new mapping, or the SA
names the wrong port. IPv4 only (the scenarios' NATs are IPv4).

    python3 xfrm_mappings.py OUT_FILE
"""
import socket
import struct
import sys
import time

NETLINK_XFRM = 6
XFRMNLGRP_MAPPING = 8
XFRM_MSG_MAPPING = 0x26

s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind((0, 1 << (XFRMNLGRP_MAPPING - 1)))
out = open(sys.argv[1], "w", buffering=1)
while True:
    try:
        d = s.recv(65536)
    except OSError:  # ENOBUFS: some were lost; say so and go on
        out.write(f"{time.time():.3f} overrun\n")
        continue
    off = 0
    while off + 16 <= len(d):
        ln, typ = struct.unpack_from("=LH", d, off)
        if ln < 16:
            break
        p = d[off + 16: off + ln]
        # struct xfrm_user_mapping: xfrm_usersa_id (daddr 16, spi be32,
        # family, proto, pad), reqid, old_saddr 16, new_saddr 16, old_sport,
        # new_sport (both big-endian)
        if typ == XFRM_MSG_MAPPING and len(p) >= 64:
            spi = struct.unpack_from(">L", p, 16)[0]
            old, new = socket.inet_ntoa(p[28:32]), socket.inet_ntoa(p[44:48])
            osp, nsp = struct.unpack_from(">HH", p, 60)
            out.write(f"{time.time():.3f} {spi:#010x} {old}:{osp} {new}:{nsp}\n")
        off += (ln + 3) & ~3
