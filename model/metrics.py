"""Multi-label metrics, as the MIML literature reports them.

Conventions (all on probabilities `probs` and 0/1 truth, one row a photo):
- hamming_loss: share of wrong (photo, label) decisions at the thresholds; exact_match: share of photos
  whose whole label set is right;
- one_error: share of photos whose most probable label is wrong;
- coverage: sklearn's coverage_error - 1, the MIML convention (how far down the ranking one must go, past
  the first label, to cover every true label); coverage_normalised = coverage / number of labels, the
  figure papers on this dataset report as "coverage" (e.g. MLDF's 0.159);
- ranking_loss: share of (true, false) label pairs ranked the wrong way round;
- log_loss: mean binary cross-entropy over every (photo, label), as training minimises it (natural log);
- average_precision: example-based average precision, sklearn's label_ranking_average_precision_score
  (the literature's "average precision"; not mAP, which averages each label's precision-recall area).
"""

import numpy as np

from model.thresholds import apply_thresholds


def one_error(y_true, probs):
    """Share of photos whose most probable label is wrong."""
    return float(np.mean(y_true[np.arange(len(y_true)), probs.argmax(axis=1)] == 0))


def log_loss(y_true, probs, eps=1e-7):
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps] as Keras clips them."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)))


def evaluate(y_true, probs, thresholds, label_names, at_least_one=False):
    """Every metric the project reports, for probabilities `probs` against 0/1 `y_true`."""
    from sklearn.metrics import (
        average_precision_score,
        coverage_error,
        f1_score,
        hamming_loss,
        label_ranking_average_precision_score,
        label_ranking_loss,
        matthews_corrcoef,
        precision_score,
        recall_score,
    )  # scikit-learn starts in about a second: not before a CLI checks its inputs

    y_true = np.asarray(y_true).astype(np.uint8)
    predicted = apply_thresholds(probs, thresholds, at_least_one)
    per_label = {}
    for j, name in enumerate(label_names):
        y, p = y_true[:, j], predicted[:, j]
        per_label[name] = {
            "precision": float(precision_score(y, p, zero_division=0)),
            "recall": float(recall_score(y, p, zero_division=0)),
            "f1": float(f1_score(y, p, zero_division=0)),
            "mcc": float(matthews_corrcoef(y, p)),
            "ap": float(average_precision_score(y, probs[:, j])) if y.any() else 0.0,
            "threshold": float(thresholds[j]),
            "support": int(y.sum()),
        }
    return {
        "hamming_loss": float(hamming_loss(y_true, predicted)),
        "exact_match": float(np.mean((predicted == y_true).all(axis=1))),
        "micro_f1": float(f1_score(y_true, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, predicted, average="macro", zero_division=0)),
        "samples_f1": float(f1_score(y_true, predicted, average="samples", zero_division=0)),
        "map": float(np.mean([m["ap"] for m in per_label.values()])),
        "ranking_loss": float(label_ranking_loss(y_true, probs)),
        "one_error": one_error(y_true, probs),
        "coverage": float(coverage_error(y_true, probs) - 1),  # MIML convention: steps beyond the first label
        "coverage_normalised": float((coverage_error(y_true, probs) - 1) / y_true.shape[1]),
        "average_precision": float(label_ranking_average_precision_score(y_true, probs)),
        "log_loss": log_loss(y_true, probs),
        "n_images": int(len(y_true)),
        "per_label": per_label,
    }


HEADLINE = [
    "hamming_loss",
    "exact_match",
    "micro_f1",
    "macro_f1",
    "samples_f1",
    "map",
    "ranking_loss",
    "one_error",
    "coverage",
]


def format_table(metrics):
    """A readable text table of the headline and per-label metrics."""
    lines = [f"{'metric':<14}{'value':>8}"] + [f"{k:<14}{metrics[k]:>8.4f}" for k in HEADLINE]
    lines += ["", f"{'label':<12}{'prec':>7}{'recall':>7}{'F1':>7}{'MCC':>7}{'AP':>7}{'thresh':>8}"]
    for name, m in metrics["per_label"].items():
        lines.append(
            f"{name:<12}{m['precision']:>7.3f}{m['recall']:>7.3f}{m['f1']:>7.3f}"
            f"{m['mcc']:>7.3f}{m['ap']:>7.3f}{m['threshold']:>8.3f}"
        )
    lines.append(f"({metrics['n_images']} photos)")
    return "\n".join(lines)
