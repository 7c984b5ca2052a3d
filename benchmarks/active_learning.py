"""A simulated user labels MIML in the labeller: which queue strategy reaches a good model with fewest labels?

    python benchmarks/active_learning.py [--data $MIML_DATA] [--cache runs/embeddings] [--backbone shipped imagenet]
        [--seeds 3] [--plot docs/img/active_learning.png]

The labels are hidden; the simulated user labels exactly the photos the queue offers (workspace.learner.choose,
the labeller's own code, on the labeller's features), 5 at a time up to 50 labels, then 10 up to 100,
25 up to 200, 50 up to 400 and 100 up to 800, with the live heads refit after each batch (the labeller itself
refits after each decision). Photos offered come from the training + validation part of the contract split (1600); after 25, 50, 100, 200, 400 and 800 labels the live heads are scored on the 400 test photos (mAP).
Strategies: random, uncertain, and auto with several random shares (the mix is chosen by this table).
Chip toggles: for each photo auto offers, the toggles needed with the suggestions pre-toggled (wrong suggestions
off, missing labels on) against without them (every true label on).
Also: the time of one refit plus scoring all 2000 photos (what happens after each decision), median of 5.
Embeddings come from model.quick's cache (computed once; ~2 minutes a backbone on 2 cores).
Caution: the shipped backbone was fine-tuned on MIML's training split, so on MIML photos its rows are optimistic;
ImageNet's backbone has seen no MIML label.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHECKPOINTS = [25, 50, 100, 200, 400, 800]
STRATEGIES = {"random": ("random", 0.0), "uncertain": ("uncertain", 0.0)}
AUTO_SHARES = [0.0, 0.2, 0.4]


def batch_size(n):
    return 5 if n < 50 else 10 if n < 100 else 25 if n < 200 else 50 if n < 400 else 100


def test_map(z, y, known, test):
    from sklearn.metrics import average_precision_score

    from workspace.learner import fit_one, score

    heads = [fit_one(z[known], y[known, j]) for j in range(y.shape[1])]
    probs = score(z[test], heads)
    return float(np.mean([average_precision_score(y[test, j], probs[:, j]) for j in range(y.shape[1])]))


def simulate(z, y, pool, test, strategy, share, seed):
    """{checkpoint: test mAP}, and the (with, without) chip toggles of each photo offered."""
    from workspace.learner import THRESHOLD, choose, fit_heads, score

    rng = np.random.default_rng(seed)
    known = np.zeros(len(y), bool)
    maps, toggles = {}, []
    while known.sum() < CHECKPOINTS[-1]:
        heads = fit_heads(z, y, known)
        probs = score(z, heads)
        picked = choose(
            strategy, batch_size(known.sum()), probs, z, pool[~known[pool]], np.flatnonzero(known), rng,
            random_share=share,
        )  # fmt: skip
        for i in picked:
            suggested = np.nan_to_num(probs[i], nan=0.0) >= THRESHOLD
            toggles.append(((suggested != y[i]).sum(), y[i].sum()))
        known[picked] = True
        if known.sum() in CHECKPOINTS:
            maps[int(known.sum())] = test_map(z, y, known, test)
    return maps, np.array(toggles)


def refit_ms(z, y, pool, n, seed=0):
    from benchmarks.common import median_ms
    from workspace.learner import fit_heads, score

    known = np.zeros(len(y), bool)
    known[np.random.default_rng(seed).choice(pool, n, replace=False)] = True
    return median_ms(lambda: score(z, fit_heads(z, y, known)), 5, warmup=1)


def features(data, cache, backbone):
    from model.cli import quiet_tensorflow

    quiet_tensorflow()
    from model.data import load_dataset
    from model.inference import Classifier
    from model.modeldir import SHIPPED_MODEL_DIR
    from model.quick import cached_embeddings, imagenet_backbone
    from workspace.learner import project

    dataset = load_dataset(data)
    model_dir = SHIPPED_MODEL_DIR if backbone == "shipped" else imagenet_backbone(cache)
    x = cached_embeddings(
        Classifier(model_dir, tta="none"), [dataset.path(i) for i in range(len(dataset.images))], cache
    )
    return project(x.astype(np.float32)), dataset.labels.astype(np.uint8)


def plot(results, path):
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (backbone, rows) in zip(axes[0], results.items()):
        for name, maps in rows.items():
            ax.plot(CHECKPOINTS, [maps[c] for c in CHECKPOINTS], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xticks(CHECKPOINTS, [str(c) for c in CHECKPOINTS])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("photos labelled")
        ax.set_ylabel("test mAP (mean of seeds)")
        ax.set_title(f"{backbone} backbone")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def table(backbone, rows, toggles, seeds):
    print(f"\n{backbone} backbone: test mAP after N labels (mean of {seeds} seeds)\n")
    print("| strategy | " + " | ".join(map(str, CHECKPOINTS)) + " | toggles/photo with suggestions | without |")
    print("|---" * (len(CHECKPOINTS) + 3) + "|")
    for name, maps in rows.items():
        with_, without = toggles[name]
        print(f"| {name} | " + " | ".join(f"{maps[c]:.4f}" for c in CHECKPOINTS) + f" | {with_:.2f} | {without:.2f} |")


def main():
    from model.data import split

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("MIML_DATA"))
    p.add_argument("--cache", default="runs/embeddings")
    p.add_argument("--backbone", nargs="+", default=["shipped", "imagenet"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--plot", default=str(ROOT / "docs" / "img" / "active_learning.png"))
    p.add_argument("--timing-only", action="store_true", help="only the refit time (no simulation, no plot)")
    args = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    print(f"commit {commit.strip()}, {args.seeds} seeds, checkpoints {CHECKPOINTS}")
    strategies = {**STRATEGIES, **{f"auto (random {s:.0%})": ("auto", s) for s in AUTO_SHARES}}
    results = {}
    for backbone in args.backbone:
        z, y = features(args.data, args.cache, backbone)
        train, val, test = split(len(y))
        pool = np.concatenate([train, val])
        rows, toggles = {}, {}
        for name, (strategy, share) in ({} if args.timing_only else strategies).items():
            started = time.time()
            runs = [simulate(z, y, pool, test, strategy, share, seed) for seed in range(args.seeds)]
            rows[name] = {c: float(np.mean([r[0][c] for r in runs])) for c in CHECKPOINTS}
            toggles[name] = np.concatenate([r[1] for r in runs]).mean(0)
            print(f"  {backbone} {name}: {time.time() - started:.0f} s", file=sys.stderr)
        results[backbone] = rows
        if rows:
            table(backbone, rows, toggles, args.seeds)
        print(
            f"\n{backbone}: refit of every head + scoring 2000 photos: {refit_ms(z, y, pool, 200):.0f} ms at 200 "
            f"labels, {refit_ms(z, y, pool, 800):.0f} ms at 800 (median of 5)"
        )
    if not args.timing_only:
        plot(results, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
