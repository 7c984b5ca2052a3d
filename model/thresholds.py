"""Per-label decision thresholds, chosen on validation predictions only.

For each label, the threshold on a fine grid that maximises Matthews correlation
(or F1); ties go to the middle of the best run, which is steadier than its edge.
"""

import numpy as np

from model.data import CONTRACT_SPLIT_SEED

GRID = np.round(np.arange(0.02, 0.981, 0.005), 3)
CRITERIA = ["mcc", "f1"]


def criterion_score(criterion):
    """The score function of `criterion` (one of CRITERIA), scikit-learn's."""
    from sklearn.metrics import f1_score, matthews_corrcoef  # here: a CLI checks its inputs before it loads

    return {"mcc": matthews_corrcoef, "f1": lambda y, p: f1_score(y, p, zero_division=0)}[criterion]


def apply_thresholds(probs, thresholds, at_least_one=False):
    """0/1 predictions; with `at_least_one`, a photo with no label above threshold gets its most probable one."""
    predicted = (probs >= np.asarray(thresholds)).astype(np.uint8)
    if at_least_one:
        empty = predicted.sum(axis=1) == 0
        predicted[empty, probs[empty].argmax(axis=1)] = 1
    return predicted


def tune_thresholds(y_true, probs, criterion="mcc", grid=GRID):
    """One threshold per label column, maximising `criterion` over `grid`."""
    score = criterion_score(criterion)
    thresholds = []
    for j in range(y_true.shape[1]):
        scores = np.array([score(y_true[:, j], probs[:, j] >= t) for t in grid])
        best = np.flatnonzero(scores >= scores.max() - 1e-12)
        run_end = best[0] + np.argmax(np.diff(np.append(best, -1)) != 1)  # end of the first run of best scores
        thresholds.append(float(grid[(best[0] + run_end) // 2]))
    return np.array(thresholds)


def at_least_one_helps(y_true, probs, thresholds):
    """Does 'always predict the most probable label' improve validation exact match without raising Hamming loss?"""
    plain = apply_thresholds(probs, thresholds)
    forced = apply_thresholds(probs, thresholds, at_least_one=True)
    hamming = [np.mean(p != y_true) for p in (plain, forced)]
    exact = [np.mean((p == y_true).all(axis=1)) for p in (plain, forced)]
    return bool(hamming[1] <= hamming[0] and exact[1] > exact[0]), {
        "without": {"hamming_loss": hamming[0], "exact_match": exact[0]},
        "with": {"hamming_loss": hamming[1], "exact_match": exact[1]},
    }


def choose_thresholds(labels, y_val, val_probs, criterion="mcc", split_seed=CONTRACT_SPLIT_SEED, fold=None):
    """Per-label thresholds and the 'at least one label' rule, from validation only.

    `split_seed` (and `fold`, "K/N" for a cross-validation fold) say which validation photos, for the record.
    Returns the thresholds, the rule, and thresholds.json's content (model.modeldir.Tuning)."""
    from model.modeldir import Tuning

    thresholds = tune_thresholds(y_val, val_probs, criterion)
    at_least_one, check = at_least_one_helps(y_val, val_probs, thresholds)
    return (
        thresholds,
        at_least_one,
        Tuning(
            labels=list(labels),
            thresholds=dict(zip(labels, thresholds.tolist())),
            criterion=criterion,
            grid=f"{GRID[0]}..{GRID[-1]} in steps of {GRID[1] - GRID[0]:.3f}",
            chosen_on=f"validation split: {len(y_val)} photos (split seed {split_seed}"
            f"{', fold ' + fold if fold else ''}); never the test split",
            at_least_one=at_least_one,
            at_least_one_check=check,
        ),
    )
