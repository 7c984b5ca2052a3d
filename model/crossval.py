"""K-fold cross-validation of a training recipe over every photo, scored as the MIML literature scores.

    python -m model.crossval --data DIR --out DIR [--folds 5] [model.train options, e.g. --augment upload]

Each fold is a full `model.train --fold K/N` run written to OUT/foldK: its 400 test photos are that fold, and
its checkpoint and thresholds come from a validation part of the other folds only. The folds are stratified
by label set. A stopped cross-validation resumes: finished folds are kept, the running one resumes from its
last epoch. OUT/crossval.json holds every fold's test metrics and their mean and standard deviation.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from model.cli import add_verbose_flag
from model.data import DataError, load_dataset
from model.modeldir import CrossVal, ModelCard, ModelDirError, read_model_dir, write_atomically

# What the papers on this dataset report, with the direction that is better.
LITERATURE = [
    ("hamming_loss", "Hamming loss", "lower"),
    ("one_error", "one-error", "lower"),
    ("coverage_normalised", "coverage / labels", "lower"),
    ("ranking_loss", "ranking loss", "lower"),
    ("average_precision", "average precision", "higher"),
]
ALSO = [("exact_match", "exact match"), ("map", "mAP")]
MLDF = {
    "hamming_loss": 0.148,
    "one_error": 0.239,
    "coverage_normalised": 0.159,
    "ranking_loss": 0.129,
    "average_precision": 0.842,
}  # Yang et al., ECAI 2020, 5-fold CV on the same 2000 photos


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m model.crossval",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Any other option is passed to model.train for every fold.",
    )
    p.add_argument("--data", help="dataset directory (default: $MIML_DATA)")
    p.add_argument("--out", required=True, help="directory for the fold models and crossval.json")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument(
        "--record-in",
        metavar="MODEL_DIR",
        action="append",
        default=[],
        help='also record the result in MODEL_DIR\'s metrics.json ("crossval"), for its model page: '
        "a model trained with this recipe (repeatable)",
    )
    add_verbose_flag(p)
    args, train_args = p.parse_known_args(argv)
    if args.folds < 2:
        p.error("--folds must be at least 2")
    if {"--out", "--fold", "--force"} & {a.split("=")[0] for a in train_args}:
        p.error("--fold, --out and --force are set by model.crossval for each fold")
    return args, train_args


def run_fold(data, out, k, folds, train_args=(), verbose=False):
    """Train fold k (1-based) of `folds` on the dataset in `data` into `out`/foldK, unless that model directory is
    already written; returns its card."""
    out = Path(out) / f"fold{k}"
    if not (out / "metrics.json").exists():
        print(f"fold {k}/{folds}: training ({out})", flush=True)
        command = [
            sys.executable,
            "-m",
            "model.train",
            *(["--data", str(data)] if data else []),
            "--out",
            str(out),
            "--fold",
            f"{k}/{folds}",
            *train_args,
            *(["--verbose"] if verbose else []),
        ]
        if subprocess.run(command).returncode:
            raise RuntimeError(f"fold {k}: model.train failed (see above); run the same command again to resume")
    return ModelCard.read(out)


def summarise(folds):
    """{metric: {"mean", "std", "folds": [...]}} over the folds' test metrics."""
    keys = [k for k, *_ in LITERATURE] + [k for k, _ in ALSO]
    return {
        k: {
            "mean": float(np.mean([f.test[k] for f in folds])),
            "std": float(np.std([f.test[k] for f in folds])),
            "folds": [f.test[k] for f in folds],
        }
        for k in keys
    }


def markdown(summary, folds):
    """The literature's table: our mean ± std over the folds beside MLDF."""
    lines = [f"| Metric ({folds}-fold CV) | This recipe | MLDF (ECAI 2020) | Better |", "|---|---:|---:|---|"]
    for key, name, better in LITERATURE:
        s = summary[key]
        lines.append(f"| {name} | {s['mean']:.4f} ± {s['std']:.4f} | {MLDF[key]:.3f} | {better} |")
    for key, name in ALSO:
        lines.append(f"| {name} | {summary[key]['mean']:.4f} ± {summary[key]['std']:.4f} | – | higher |")
    return "\n".join(lines)


def main(argv=None):
    args, train_args = parse_args(argv)
    try:
        load_dataset(args.data)  # a bad --data (or --record-in) is one line now, not after five folds
        for model_dir in args.record_in:
            read_model_dir(model_dir)
        folds = [
            run_fold(args.data, args.out, k, args.folds, train_args, args.verbose) for k in range(1, args.folds + 1)
        ]
    except (DataError, ModelDirError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    summary = summarise(folds)
    recipe = folds[0].training
    result = CrossVal(
        folds=args.folds,
        train_args=train_args,
        metrics=summary,
        architecture=recipe.architecture,
        augment=recipe.augment,
        test_photos=sum(f.split.test for f in folds),
    )
    write_atomically(Path(args.out) / "crossval.json", json.dumps(result.to_json(), indent=2).encode())
    for model_dir in args.record_in:
        card = ModelCard.read(model_dir)
        card.crossval = result
        card.write(model_dir)
    print(markdown(summary, args.folds))


if __name__ == "__main__":
    main()
