"""Quality over several random splits: mean and standard deviation of the test metrics.

    python benchmarks/quality.py --data DIR [--seeds 100 1 2] [--archs efficientnet-lite0 seed-cnn] [--runs runs/bench]

Trains each architecture on each split (split seed 100 is the contract split) with `model.train`'s
protocol (every choice on validation), unless runs/bench/ARCH-splitSEED already holds a model
directory, so a stopped benchmark resumes. Prints a markdown table for docs/results.md.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from model.modeldir import ModelCard  # noqa: E402

KEYS = ["hamming_loss", "exact_match", "map", "micro_f1", "macro_f1", "one_error"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 1, 2])
    p.add_argument("--archs", nargs="+", default=["efficientnet-lite0", "seed-cnn"])
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench"))
    args = p.parse_args()
    results = {}
    for arch in args.archs:
        for seed in args.seeds:
            out = Path(args.runs) / f"{arch}-split{seed}"
            if not (out / "metrics.json").exists():
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "model.train",
                        "--data",
                        args.data,
                        "--out",
                        str(out),
                        "--arch",
                        arch,
                        "--split-seed",
                        str(seed),
                    ],
                    cwd=ROOT,
                    check=True,
                )
            card = ModelCard.read(out)
            results.setdefault(arch, []).append((seed, card.test, card.training.minutes))

    print("| Model | split seed | Hamming loss | exact match | mAP | micro F1 | macro F1 | one-error | train min |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for arch, rows in results.items():
        for seed, test, minutes in rows:
            print(f"| {arch} | {seed} | " + " | ".join(f"{test[k]:.4f}" for k in KEYS) + f" | {minutes} |")
        if len(rows) > 1:
            cells = []
            for k in KEYS:
                values = [test[k] for _, test, _ in rows]
                cells.append(f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
            print(f"| **{arch}** | **mean ± std** | " + " | ".join(cells) + " | |")


if __name__ == "__main__":
    main()
