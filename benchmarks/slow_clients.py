"""Waitress's connection limits, timed: a request's latency while 150 slow clients hold connections, and how long
an idle connection stays open (visualization.py sets channel_timeout=30). tests/test_server.py checks that both
happen; this times them.

    python benchmarks/slow_clients.py [--data DIR] [--requests 20] [--idle 3]

Starts `python visualization.py` (waitress) on a free loopback port; prints median and worst latency of
/api/health alone and beside 150 half-sent requests, then the seconds until each of `--idle` silent connections
is closed by the server (expected: 30 to 35 s, waitress checks every few seconds).
"""

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def latencies_ms(port, n):
    from benchmarks.common import call

    times = []
    for _ in range(n):
        started = time.perf_counter()
        call(port, "GET", "/api/health", expect=200)
        times.append((time.perf_counter() - started) * 1000)
    return times


def hold_slow_clients(port, n):
    """n connections that each send half a request and then nothing."""
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n")
        held.append(s)
    return held


def idle_seconds(port, closed_after):
    """Seconds until the server closes a connection on which nothing is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        started = time.monotonic()
        assert s.recv(1) == b""
        closed_after.append(time.monotonic() - started)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", help="a dataset for the app (optional: the limits do not depend on it)")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--idle", type=int, default=3, help="silent connections whose closing is timed (in parallel)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import start_server

    server, port = start_server(ROOT, [*(["--data", args.data] if args.data else []), "--no-explore"])
    try:
        alone = latencies_ms(port, args.requests)
        held = hold_slow_clients(port, 150)
        try:
            beside = latencies_ms(port, args.requests)
        finally:
            for s in held:
                s.close()
        closed_after = []
        threads = [threading.Thread(target=idle_seconds, args=(port, closed_after)) for _ in range(args.idle)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.terminate()
        server.wait(30)
    print("| /api/health | median ms | worst ms |\n|---|---|---|")
    print(f"| alone | {statistics.median(alone):.1f} | {max(alone):.1f} |")
    print(f"| beside 150 slow clients | {statistics.median(beside):.1f} | {max(beside):.1f} |")
    print(f"idle connections closed after {', '.join(f'{s:.1f}' for s in sorted(closed_after))} s (channel_timeout 30)")


if __name__ == "__main__":
    main()
