"""The server's start-up and memory, two checkouts side by side: `python visualization.py --no-explore` (waitress)
started from each folder in turn, rounds interleaved (the order alternating), warm caches.

    python benchmarks/server_start.py --data DIR --tree BEFORE --tree AFTER [--rounds 5]

The dataset (--data) is the server's too, as $MIML_DATA. Each start measures: wall seconds from the process's start to its "MIML Scenes ready" line, the CPU seconds it
had used by then, its RSS after the first `POST /api/predict` (a MIML photo) and whether TensorFlow's library is
mapped then; then the time of the layer browser's first request (GET /photo/1?layer=..., which loads the Keras
model where the start did not) and the RSS after it. A first untimed start of each tree fills its caches (converted models, network facts). Prints medians
over rounds and ratios against the first tree, as markdown.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import call, free_port, multipart, rss_mb  # noqa: E402

LAYER = "m1_stem_activation"  # a layer of the shipped ensemble, for the layer browser's first request


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_start(tree, data, photo, timeout=300):
    """{ready_s, ready_cpu_s, rss_mb, tensorflow} of one start of the server in folder `tree`."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "visualization.py", "--port", str(port), "--no-explore", "--data", data],
        cwd=tree,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        ready = time.perf_counter() - started
        if not line.startswith("MIML Scenes ready") or ready > timeout:
            raise RuntimeError(f"the server in {tree} did not start: {line!r}")
        cpu = cpu_seconds(proc.pid)
        call(port, "POST", "/api/predict", *multipart("photo.jpg", photo), expect=200)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        out = {
            "ready_s": ready,
            "ready_cpu_s": cpu,
            "rss_mb": rss_mb(proc.pid),
            "tensorflow": "libtensorflow_framework" in maps,
        }
        started = time.perf_counter()  # the layer browser: the Keras model, loaded now if it was not at start
        call(port, "GET", f"/photo/1?layer={LAYER}", expect=200)
        return out | {"layer_s": time.perf_counter() - started, "layer_rss_mb": rss_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the MIML dataset (its first photo is posted)")
    p.add_argument("--tree", action="append", required=True, help="a checkout to start the server from (repeat)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    photo = (Path(args.data) / "original" / "1.jpg").read_bytes()
    for tree in args.tree:
        one_start(tree, args.data, photo)  # fills the caches
    runs = {tree: [] for tree in args.tree}
    for r in range(args.rounds):
        for tree in args.tree if r % 2 == 0 else args.tree[::-1]:
            runs[tree].append(one_start(tree, args.data, photo))
            print(f"round {r + 1}: {tree}: {runs[tree][-1]}", file=sys.stderr, flush=True)
    rows = [
        ("Start to `MIML Scenes ready` (s)", "ready_s", "{:.2f}"),
        ("CPU used by then (s)", "ready_cpu_s", "{:.2f}"),
        ("RSS after the first `/api/predict` (MB)", "rss_mb", "{:.0f}"),
        ("Then the layer browser's first request (s)", "layer_s", "{:.2f}"),
        ("RSS after it (MB)", "layer_rss_mb", "{:.0f}"),
    ]
    base = args.tree[0]
    print(f"| Median of {args.rounds} rounds | {' | '.join(Path(t).name for t in args.tree)} |")
    print("|---|" + "---:|" * len(args.tree))
    for title, key, fmt in rows:
        medians = {t: statistics.median(run[key] for run in runs[t]) for t in args.tree}
        cells = [
            fmt.format(medians[t]) + ("" if t == base else f" ({medians[t] / medians[base]:.2f}x)") for t in args.tree
        ]
        print(f"| {title} | {' | '.join(cells)} |")
    loaded = [f"{sum(run['tensorflow'] for run in runs[t])} of {args.rounds}" for t in args.tree]
    print(f"| TensorFlow loaded | {' | '.join(loaded)} |")


if __name__ == "__main__":
    main()
