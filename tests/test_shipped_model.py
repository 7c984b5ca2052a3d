"""The shipped model, evaluated now on the real contract test split."""

import numpy as np
import pytest

from model.data import load_dataset, split
from model.inference import Classifier

pytestmark = [pytest.mark.needs_data, pytest.mark.slow]  # slow: the 400 test photos


@pytest.fixture(scope="module")
def test_results(miml_data):
    dataset = load_dataset(miml_data)
    classifier = Classifier(runtime="litert")  # float32: the stored probabilities within 1e-4
    _, _, test_idx = split(len(dataset.images))
    probs = classifier.probabilities(dataset.load_photos(test_idx, classifier.size))
    metrics = classifier.evaluate(dataset.labels[test_idx], probs)
    return classifier, dataset, test_idx, probs, metrics


def test_shipped_model_quality_on_contract_test_split(test_results):
    _, _, _, _, metrics = test_results
    assert metrics["n_images"] == 400
    assert metrics["hamming_loss"] <= 0.055, metrics["hamming_loss"]
    assert metrics["exact_match"] >= 0.77, metrics["exact_match"]


def test_stored_test_predictions_are_reproduced(test_results):
    classifier, dataset, test_idx, probs, metrics = test_results
    names, truth, stored = classifier.info.test_predictions()
    assert names == [dataset.images[i] for i in test_idx]
    assert np.array_equal(truth, dataset.labels[test_idx])
    np.testing.assert_allclose(probs, stored, atol=1e-4)
    assert metrics["hamming_loss"] == pytest.approx(classifier.card.test["hamming_loss"])


def test_thresholds_were_chosen_on_validation(test_results):
    classifier = test_results[0]
    # one pass: flip TTA gave the ensemble no lower validation loss or higher mAP, at twice the cost
    assert classifier.tta == "none" and classifier.card.tuning.tta == "none"
    assert classifier.card.tuning.other_tta.tta == "flip"
    assert "validation" in classifier.card.tuning.chosen_on
    assert classifier.card.split.seed == 100
