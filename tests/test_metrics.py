import numpy as np
import pytest

from model.metrics import evaluate, one_error
from model.thresholds import apply_thresholds, at_least_one_helps, tune_thresholds

Y = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
P = np.array(
    [
        [0.9, 0.2, 0.1],  # top label right
        [0.3, 0.6, 0.8],  # top label right
        [0.4, 0.7, 0.5],  # top label right; 'a' below 0.5 -> a miss
        [0.6, 0.1, 0.4],
    ]
)  # top label wrong; 'a' a false alarm, 'c' a miss


def test_metrics_by_hand():
    m = evaluate(Y, P, [0.5, 0.5, 0.5], ["a", "b", "c"])
    # predictions: [1,0,0] [0,1,1] [0,1,1] [1,0,0] -> wrong cells: (2,0) (2,2) (3,0) (3,2)
    assert m["hamming_loss"] == pytest.approx(4 / 12)
    assert m["exact_match"] == pytest.approx(2 / 4)
    assert m["one_error"] == pytest.approx(1 / 4)
    # coverage (MIML: steps down the ranking to cover all true labels, minus one):
    # rows need depth 1, 2, 3, 2 -> mean 2, minus 1
    assert m["coverage"] == pytest.approx(1.0)
    assert m["coverage_normalised"] == pytest.approx(1.0 / 3)  # the literature's figure: over 3 labels
    # example-based average precision: for each true label, (true labels ranked at or above it) / its rank:
    # row 0: 1; row 1: c 1/1, b 2/2; row 2: b 1/1, a 2/3; row 3: c 1/2
    assert m["average_precision"] == pytest.approx((1 + 1 + (1 + 2 / 3) / 2 + 1 / 2) / 4)
    # ranking loss: mis-ordered (true, false) pairs / all pairs per photo: 0, 0, 1/2 (a < c), 1/2 (c < a)
    assert m["ranking_loss"] == pytest.approx((0 + 0 + 0.5 + 0.5) / 4)
    a = m["per_label"]["a"]  # a: truth 1,0,1,0; predicted 1,0,0,1
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert a["mcc"] == pytest.approx(0.0)
    assert m["per_label"]["b"]["f1"] == 1.0 and m["per_label"]["b"]["ap"] == 1.0
    # log loss by hand for two cells of photo 0 and the rest through the formula's other branch
    assert m["log_loss"] == pytest.approx(-np.mean(np.where(Y == 1, np.log(P), np.log(1 - P))))
    assert evaluate(Y[:1], np.array([[0.5, 0.5, 0.5]]), [0.5] * 3, ["a", "b", "c"])["log_loss"] == pytest.approx(
        np.log(2)
    )
    assert m["n_images"] == 4 and m["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 2))


def test_one_error():
    assert one_error(Y, P) == 0.25


def test_apply_thresholds_and_at_least_one():
    probs = np.array([[0.2, 0.3], [0.9, 0.1]])
    assert apply_thresholds(probs, [0.5, 0.5]).tolist() == [[0, 0], [1, 0]]
    assert apply_thresholds(probs, [0.5, 0.5], at_least_one=True).tolist() == [[0, 1], [1, 0]]


def test_tuned_threshold_separates_classes_in_the_middle_of_the_gap():
    y = np.array([[0], [0], [0], [1], [1], [1]])
    p = np.array([[0.10], [0.20], [0.30], [0.60], [0.70], [0.80]])
    (t,) = tune_thresholds(y, p)
    assert 0.30 < t <= 0.60 and abs(t - 0.45) < 0.01  # any t in (0.30, 0.60] is perfect: take the middle
    (t_f1,) = tune_thresholds(y, p, "f1")
    assert 0.30 < t_f1 <= 0.60


def test_tuning_is_per_label():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    p = np.array([[0.15, 0.1], [0.12, 0.2], [0.05, 0.9], [0.02, 0.95]])
    t = tune_thresholds(y, p)
    assert 0.05 < t[0] <= 0.12 and 0.2 < t[1] <= 0.9


def test_at_least_one_kept_only_when_it_helps():
    y = np.array([[1, 0], [0, 1]])
    probs = np.array([[0.4, 0.1], [0.1, 0.3]])
    helps, check = at_least_one_helps(y, probs, [0.5, 0.5])
    assert helps and check["with"]["exact_match"] == 1.0 and check["without"]["exact_match"] == 0.0
    helps, _ = at_least_one_helps(np.array([[0, 0]]), np.array([[0.4, 0.1]]), [0.5, 0.5])
    assert not helps
