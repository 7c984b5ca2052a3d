"""The server's worker and stream layout for OpenVINO, as benchmarks/fast_path.py measured it for LiteRT: side by
side in one run, rounds interleaved (docs/runtime.md, "Worker and stream layout for OpenVINO").

    python benchmarks/openvino_layout.py --data DIR [--rounds 2] [--requests 60] [--runtime auto]

A layout is W workers (forward passes that may run at once: OpenVINO infer requests, `--workers`) on a compiled
model of S streams (`model.openvino_runtime.STREAMS`, set in the server's process by a launcher) sharing the
machine's cores (`INFERENCE_NUM_THREADS`): S=1 gives each pass every core, S=2 one core a stream. For each layout
a fresh server (`python visualization.py --no-explore --runtime R --workers W`, waitress) is measured: 1
sequential client and 8 concurrent clients sending `POST /api/predict` of the first 20 contract test photos
(requests/s and median latency), and the server's RSS after warm-up and after the requests.
"""

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import call, in_threads, multipart, rss_mb, start_server  # noqa: E402

LAYOUTS = [(2, 1), (1, 1), (2, 2), (1, 2)]  # (workers, streams); (2, 1) is what shipped before this was measured
LAUNCHER = (
    "import runpy, sys; import model.openvino_runtime as ov; ov.STREAMS = int(sys.argv[1]); "
    "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def clients(port, bodies, n, total):
    """(requests/s, median latency in ms) of `n` client threads sending `total` predictions between them."""
    counter, lock, latencies = iter(range(total)), threading.Lock(), []

    def client():
        while (i := next_of(counter, lock)) is not None:
            started = time.perf_counter()
            call(port, "POST", "/api/predict", *bodies[i % len(bodies)], expect=200)
            latencies.append((time.perf_counter() - started) * 1000)

    seconds = in_threads(client, n)
    return total / seconds, statistics.median(latencies)


def next_of(counter, lock):
    with lock:
        return next(counter, None)


def measure(layout, args, bodies):
    workers, streams = layout
    server_args = ["--data", args.data, "--no-explore", "--runtime", args.runtime, "--workers", str(workers)]
    proc, port = start_server(ROOT, server_args, timeout=600, python_args=("-c", LAUNCHER, str(streams)))
    try:
        clients(port, bodies, 2, 8)  # warm-up: both batch-1 requests compiled (or loaded from the cache)
        out = {"rss_warm": rss_mb(proc.pid)}
        out["rps_1"], out["p50_1"] = clients(port, bodies, 1, args.requests)
        out["rps_8"], out["p50_8"] = clients(port, bodies, 8, 4 * args.requests)
        out["rss_after"] = rss_mb(proc.pid)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=60, help="1 client's requests; 8 clients send 4x as many")
    p.add_argument("--runtime", default="auto")
    args = p.parse_args()
    from model.data import load_dataset, split

    dataset = load_dataset(args.data)
    bodies = [multipart(f"{i}.jpg", dataset.path(int(i)).read_bytes()) for i in split(len(dataset.images))[2][:20]]
    load = os.getloadavg()
    results = {layout: [] for layout in LAYOUTS}
    for r in range(args.rounds):
        for layout in LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]:
            results[layout].append(measure(layout, args, bodies))
            print(f"round {r + 1}, {layout}: {results[layout][-1]}", file=sys.stderr, flush=True)
    after = os.getloadavg()
    print(
        f"\nLoad average (1/5/15 min) at the start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, at the end "
        f"{after[0]:.1f}/{after[1]:.1f}/{after[2]:.1f}, {os.cpu_count()} cores; {args.rounds} rounds, interleaved.\n"
    )
    rows = [
        ("1 client (requests/s)", "rps_1"),
        ("1 client, median latency (ms)", "p50_1"),
        ("8 clients (requests/s)", "rps_8"),
        ("8 clients, median latency (ms)", "p50_8"),
        ("Server RSS after warm-up (MB)", "rss_warm"),
        ("Server RSS after the requests (MB)", "rss_after"),
    ]
    names = [f"{w} worker{'s' if w > 1 else ''} x {s} stream{'s' if s > 1 else ''}" for w, s in LAYOUTS]
    print("| Measurement (median over rounds) | " + " | ".join(names) + " |\n|---|" + "---:|" * len(LAYOUTS))
    for title, key in rows:
        base = statistics.median(row[key] for row in results[LAYOUTS[0]])
        cells = [f"{base:.1f}"] + [
            f"{v:.1f} ({v / base:.2f}x)"
            for v in (statistics.median(row[key] for row in results[layout]) for layout in LAYOUTS[1:])
        ]
        print(f"| {title} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
