"""Quick mode against full mode on the same 500 photos: wall time through the job machinery and test metrics.

    python benchmarks/train_modes.py --data DIR [--runs runs/bench-modes] [--photos 500] [--skip-full]

The dataset is every 4th MIML photo (500, the five MIML labels) copied to RUNS/datasets/miml500; every job runs
as the app runs it (Registry.start_job: a spawned process, TensorFlow's start-up included), one at a time:
quick on the shipped backbone with a cold and then a warm embedding cache, quick on ImageNet's backbone
(cold), and full mode (model.train, 20 epochs at most). The split is model.train's (seed 100) over the 500
photos: 320 train, 80 validation, 100 test. Caution: the shipped backbone was fine-tuned on 1280 MIML photos,
some of which are in this subset's test part, so its quick row is optimistic on MIML photos; the ImageNet row
and full mode have seen none of them. Prints a markdown table for docs/benchmarks.md.
"""

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEYS = ["hamming_loss", "exact_match", "map", "macro_f1", "one_error"]


def subset(data, folder, photos):
    """Every (2000 / photos)-th photo of the dataset in `data`, as a dataset folder registered in the runs folder."""
    if (folder / "dataset.json").is_file():
        return
    rows = list(csv.reader(open(Path(data) / "labels.csv")))
    chosen = rows[1:][:: max(1, (len(rows) - 1) // photos)][:photos]
    (folder / "original").mkdir(parents=True)
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *chosen])
    for row in chosen:
        shutil.copy(Path(data) / "original" / row[0], folder / "original" / row[0])
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "dataset": folder.name,
                "name": folder.name,
                "photos": len(chosen),
                "labels": rows[0][1:],
                "created": "benchmark",
            }
        )
    )


def run(registry, name, mode, **kwargs):
    started = time.time()
    job = registry.start_job("miml500", mode, **kwargs)
    while (status := registry.job(job)).live:
        time.sleep(0.5)
    seconds = time.time() - started
    if status.state != "done":
        raise SystemExit(f"{name}: {status}")
    from model.modeldir import ModelCard

    card = ModelCard.read(registry.model_path(job))
    print(f"{name}: {seconds:.1f} s, test {[round(card.test[k], 4) for k in KEYS]}", flush=True)
    return name, seconds, card


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench-modes"))
    p.add_argument("--photos", type=int, default=500)
    p.add_argument("--skip-full", action="store_true")
    args = p.parse_args()
    from workspace import Registry
    from workspace.legacy import import_dataset

    registry = Registry(args.runs)
    subset(args.data, registry.root / "datasets" / "miml500", args.photos)
    import_dataset(registry.db, registry.root / "datasets" / "miml500")  # a folder of the old layout, into the store
    shutil.rmtree(registry.root / "embeddings")  # cold caches
    (registry.root / "embeddings").mkdir()
    rows = [
        run(registry, "quick, shipped backbone, cold cache", "quick"),
        run(registry, "quick, shipped backbone, warm cache", "quick"),
        run(registry, "quick, ImageNet backbone, cold cache", "quick", backbone="imagenet"),
    ]
    if not args.skip_full:
        rows.append(run(registry, "full (model.train, 20 epochs at most)", "full"))
    print("\n| Mode | wall time (s) | epochs | Hamming loss | exact match | mAP | macro F1 | one-error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, seconds, m in rows:
        print(
            f"| {name} | {seconds:.1f} | {m.training.epochs_run or 0} | "
            + " | ".join(f"{m.test[k]:.4f}" for k in KEYS)
            + " |"
        )


if __name__ == "__main__":
    main()
