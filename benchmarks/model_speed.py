"""In-process prediction of one photo, end to end (file bytes -> decode -> probabilities), side by side in one
run: the shipped model of an earlier commit through the Keras path against model directories through LiteRT.

    python benchmarks/model_speed.py --data DIR [--baseline-rev 9f60c28] [--model DIR ...] [--repeats 200]

The baseline is version 1's network (`model/shipped` at --baseline-rev, unpacked with `git archive`) run the way
issue 9 sets the budget: `Classifier(runtime="keras", tta="none")`, one pass. Each candidate runs as the app
runs it (LiteRT, its own TTA mode; an ensemble is one network). The photos are the first 50 contract test
photos, taken in turn; the measurements are interleaved round by round so that a noisy machine hurts them
alike. Prints the medians and their ratio to the baseline.
"""

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def baseline_dir(rev, into):
    """model/shipped as it was at commit `rev`, unpacked under `into`."""
    archive = subprocess.run(["git", "archive", rev, "model/shipped"], cwd=ROOT, capture_output=True, check=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(into, filter="data")
    return Path(into) / "model" / "shipped"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--baseline-rev", default="9f60c28", help="commit whose model/shipped is the baseline")
    p.add_argument("--model", nargs="+", default=[str(ROOT / "model" / "shipped")])
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args()
    from model.cli import quiet_tensorflow

    quiet_tensorflow()
    from model.data import load_dataset, split
    from model.inference import Classifier

    dataset = load_dataset(args.data)
    photos = [dataset.path(i).read_bytes() for i in split(len(dataset.images))[2][:50]]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            (
                f"version 1 at {args.baseline_rev}, Keras, one pass",
                Classifier(baseline_dir(args.baseline_rev, tmp), runtime="keras", tta="none"),
            )
        ]
        runs += [(f"{Path(m).name}, LiteRT, TTA {c.tta}", c) for m in args.model for c in [Classifier(m)]]
        for _, c in runs:  # warm-up: conversion, tracing, first allocations
            for data in photos[:5]:
                c.probabilities([c.load(data)], batch_size=1)
        times = {name: [] for name, _ in runs}
        for r in range(args.repeats):
            data = photos[r % len(photos)]
            for name, c in runs:
                start = time.perf_counter()
                c.probabilities([c.load(data)], batch_size=1)
                times[name].append(time.perf_counter() - start)
    base = np.median(times[runs[0][0]])
    print("| Path | median ms a photo | ratio to version 1 through Keras |")
    print("|---|---:|---:|")
    for name, _ in runs:
        print(f"| {name} | {1000 * np.median(times[name]):.1f} | {np.median(times[name]) / base:.2f}x |")


if __name__ == "__main__":
    main()
