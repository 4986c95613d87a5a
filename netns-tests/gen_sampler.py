#!/usr/bin/env python3
"""Samples, every --interval seconds until --stop-file exists, the hub's latest
generation for one node and that node's own generation, straight from both
daemons' control sockets (path-bound Unix sockets work across namespaces).
Prints one JSON line: {"samples": S, "max_ahead": A, "min_ahead": B}, where
ahead = hub generation - node generation, taken from back-to-back queries
(hub first, so a rotation between the two can only lower the figure).

  gen_sampler.py --hub-socket H --node-socket N --node NAME --stop-file F
"""
import argparse, json, os, socket, time


def status(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        s.sendall(b'{"cmd":"status"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return json.loads(buf)
    finally:
        s.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hub-socket", required=True)
    p.add_argument("--node-socket", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--interval", type=float, default=0.05)
    a = p.parse_args()
    aheads = []
    while not os.path.exists(a.stop_file):
        try:
            hub = next(x for x in status(a.hub_socket)["peers"] if x["name"] == a.node)
            node = status(a.node_socket)["peers"][0]
            # generation 0: the node is (re)initialising; nothing to compare.
            if node["generation"] > 0 and hub["generation"] > 0:
                aheads.append(hub["generation"] - node["generation"])
        except (OSError, ValueError, StopIteration, KeyError, IndexError):
            pass
        time.sleep(a.interval)
    print(json.dumps({
        "samples": len(aheads),
        "max_ahead": max(aheads, default=None),
        "min_ahead": min(aheads, default=None),
    }))


if __name__ == "__main__":
    main()
