#!/usr/bin/env python3
"""The SAs or policies of `ip -s xfrm state` / `ip xfrm policy` (read on
stdin) as JSON, one object per entry, keys left out.

    ip -s xfrm state | python3 xfrm_state.py state
    ip xfrm policy | python3 xfrm_state.py policy

state: src, dst, spi, reqid, encap ([sport, dport] or null), seq and oseq
(the ESN context's low words), packets (lifetime current).
policy: src, dst (selector), dir, action, spi (of the template), reqid.
"""
import json
import re
import sys


def blocks(text, start):
    out, cur = [], None
    for line in text.splitlines():
        if line.startswith(start):
            cur = [line]
            out.append(cur)
        elif cur is not None:
            cur.append(line)
    return ["\n".join(b) for b in out]


def num(pat, b, base=10):
    m = re.search(pat, b)
    return int(m.group(1), base) if m else None


def state(text):
    out = []
    for b in blocks(text, "src "):
        m = re.match(r"src (\S+) dst (\S+)", b)
        e = re.search(r"encap type espinudp sport (\d+) dport (\d+)", b)
        p = re.search(r"(\d+)\(bytes\), (\d+)\(packets\)", b)
        out.append({
            "src": m.group(1), "dst": m.group(2),
            "spi": num(r"spi 0x([0-9a-f]+)", b, 16),
            "reqid": num(r"reqid (\d+)", b),
            "encap": [int(e.group(1)), int(e.group(2))] if e else None,
            "seq": num(r"\bseq 0x([0-9a-f]+), oseq-hi", b, 16),
            "oseq": num(r"\boseq 0x([0-9a-f]+)", b, 16),
            "packets": int(p.group(2)) if p else None,
        })
    return out


def policy(text):
    out = []
    for b in blocks(text, "src "):
        m = re.match(r"src (\S+) dst (\S+)", b)
        out.append({
            "src": m.group(1), "dst": m.group(2),
            "dir": num(r"dir (\w+)", b.replace("dir in", "dir 0").replace("dir out", "dir 1").replace("dir fwd", "dir 2")),
            "action": "block" if "action block" in b else "allow",
            "spi": num(r"proto esp spi 0x([0-9a-f]+)", b, 16),
            "reqid": num(r"reqid (\d+)", b),
        })
    return out


text = sys.stdin.read()
print(json.dumps(state(text) if sys.argv[1] == "state" else policy(text)))
