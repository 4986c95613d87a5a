#!/usr/bin/env python3
"""Per-event data loss of scenario 78, from its work directory.

    python3 move_figures.py WORK RATE LABEL

WORK holds `events` ("KIND ROUND UNIX_TIME" per line: P, a new NAT port
for n1; A, a new address for n3), and per probe stream NAME its receiver's
`probe-NAME.json`, its sender's `sent-NAME` and `start-NAME` (when the
sender was started). n1's streams belong to the P events, n3's to the A
events; a run of lost packets is charged to the last event of its kind
that began before it (with 1.5 s of slack for the sender's start-up), or
to none if it came before the first. A stream named n3-down-R starts at
move R and is charged to it whole.
"""
import glob
import json
import os
import sys

work, rate, label = sys.argv[1], float(sys.argv[2]), sys.argv[3]
events = []
for line in open(f"{work}/events"):
    k, r, t = line.split()
    events.append((k, int(r), float(t)))
rows, other = {}, 0
for f in sorted(glob.glob(f"{work}/probe-*.json")):
    name = os.path.basename(f)[6:-5]
    rep = json.load(open(f))
    start = float(open(f"{work}/start-{name}").read())
    miss = sorted(rep["missing"])
    runs, i = [], 0
    while i < len(miss):
        j = i
        while j + 1 < len(miss) and miss[j + 1] == miss[j] + 1:
            j += 1
        runs.append((start + miss[i] / rate, j - i + 1))
        i = j + 1
    stream = "-".join(name.split("-")[:2])
    kind = "P" if name.startswith("n1") else "A"
    for at, n in runs:
        if name.startswith("n3-down-"):
            ev = int(name.rsplit("-", 1)[1])
        else:
            before = [e for e in events if e[0] == kind and e[2] <= at + 1.5]
            ev = before[-1][1] if before else None
        if ev is None:
            other += n
            print(f"  {name}: {n} lost at +{at - start:.2f} s, before any event")
            continue
        lost, longest = rows.get((kind, ev, stream), (0, 0))
        rows[(kind, ev, stream)] = (lost + n, max(longest, round(n * 1000 / rate)))
for kind, what, streams in (("P", "NAT port change (n1)", ("n1-up", "n1-down")),
                            ("A", "address move (n3)", ("n3-up", "n3-down"))):
    rounds = sorted({e[1] for e in events if e[0] == kind})
    for s in streams:
        figs = [rows.get((kind, r, s), (0, 0)) for r in rounds]
        lost = [x[0] for x in figs]
        out = [x[1] for x in figs]
        print(f"FIGURE {label} {what} {s}: lost per event {lost}, outage ms {out}; "
              f"mean lost {sum(lost) / len(lost):.1f}, max outage {max(out)} ms")
print(f"FIGURE {label}: packets lost outside the events: {other}")
