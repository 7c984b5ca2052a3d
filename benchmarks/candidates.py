"""Compare candidate models on validation photos only: the candidates table in docs/results.md.

    python benchmarks/candidates.py --data DIR MODEL_DIR ... [A+B ...] [--tta none flip]

A candidate is a model directory or an ensemble of several, written `A+B`: the mean of its members' logits
(what `model.ensemble` builds into one network). Each row: validation log loss, mAP, and the Hamming loss and
exact match at thresholds tuned on those same validation photos (per label, best Matthews correlation, and the
"at least one label" rule when it helps), as `model.train` chooses them; and, on the validation photos with one
true label, how often that label is predicted and how many labels are (a stand-in for the private set). All candidates must share a split;
the test photos are never read.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model.data import load_dataset, split  # noqa: E402
from model.metrics import evaluate  # noqa: E402
from model.thresholds import apply_thresholds, at_least_one_helps, tune_thresholds  # noqa: E402


def validation_probs(model_dir, dataset, tta, cache):
    """A model's (or an ensemble's, 'A+B') probabilities on its split's validation photos."""
    from scipy.special import expit, logit

    from model.inference import Classifier

    members = [Classifier(m, tta=tta) for m in model_dir.split("+")]
    seeds = {c.card.split.seed for c in members}
    if len(seeds) != 1:
        sys.exit(f"{model_dir}: the members were trained on different splits")
    _, val_idx, _ = split(len(dataset.images), seeds.pop())
    logits = []
    for c in members:
        if (c.size, tuple(val_idx)) not in cache:
            cache[c.size, tuple(val_idx)] = dataset.load_photos(val_idx, c.size)
        logits.append(logit(np.clip(c.probabilities(cache[c.size, tuple(val_idx)]), 1e-7, 1 - 1e-7)))
    return dataset.labels[val_idx], expit(np.mean(logits, axis=0))


def main_label_recall(y, predicted):
    """On the photos with one true label (like the private set of modern photos, one clear main label each):
    the share whose label is predicted, the lowest such share over the labels, and labels predicted a photo."""
    single = y.sum(axis=1) == 1
    label = y[single].argmax(axis=1)
    found = predicted[single][np.arange(single.sum()), label] == 1
    return found.mean(), min(found[label == j].mean() for j in np.unique(label)), predicted[single].sum(axis=1).mean()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--tta", nargs="+", default=["flip"], choices=["none", "flip"])
    p.add_argument("models", nargs="+", help="model directories, or ensembles A+B")
    args = p.parse_args()
    dataset, cache = load_dataset(args.data), {}
    print(
        "| Candidate | TTA | validation loss | validation mAP | validation Hamming / exact "
        "| one-label photos: label found (worst label) | labels a photo |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for model in args.models:
        for tta in args.tta:
            y, probs = validation_probs(model, dataset, tta, cache)
            thresholds = tune_thresholds(y, probs)
            at_least_one, _ = at_least_one_helps(y, probs, thresholds)
            m = evaluate(y, probs, thresholds, dataset.label_names, at_least_one)
            found, worst, per_photo = main_label_recall(y, apply_thresholds(probs, thresholds, at_least_one))
            name = " + ".join(Path(part).name for part in model.split("+"))
            print(
                f"| {name} | {tta} | {m['log_loss']:.4f} | {m['map']:.4f} | "
                f"{m['hamming_loss']:.4f} / {m['exact_match']:.4f} | {found:.1%} ({worst:.1%}) | {per_photo:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
