"""The model page: the training curve served from the model directory, and our metrics beside published ones."""

import re
import shutil
from html import unescape

import pytest
from sklearn.metrics import coverage_error, label_ranking_average_precision_score

from model.modeldir import SHIPPED_MODEL_DIR


def comparison(html):
    """{row header: {metric: cell text}} of the comparison table."""
    table = html.split("data-compare>", 1)[1].split("</table>", 1)[0]
    rows = {}
    for header, cells in re.findall(r"<tr[^>]*><th>(.*?)</th>(.*?)</tr>", table, re.S):
        rows[unescape(header)] = dict(re.findall(r'<td data-metric="(\w+)">([^<]*)</td>', cells))
    return rows


@pytest.mark.needs_data
def test_training_curve_is_the_model_directorys(client):
    r = client.get("/model/training_curve.png")
    assert r.status_code == 200 and r.mimetype == "image/png"
    assert r.data == (SHIPPED_MODEL_DIR / "training_curve.png").read_bytes()
    assert 'src="/model/training_curve.png"' in client.get("/model").get_data(as_text=True)


@pytest.mark.needs_data
def test_our_row_and_the_published_rows(client, scenes):
    html = client.get("/model").get_data(as_text=True)
    rows = comparison(html)
    ours = rows["efficientnet-lite0 + efficientnet-lite1 (ensemble) (this model)"]
    test = scenes.classifier.card.test
    _, truth, probs = scenes.classifier.test_predictions()
    assert float(ours["hamming_loss"]) == round(test["hamming_loss"], 4) == 0.0515
    assert float(ours["exact_match"]) == 0.785 and float(ours["one_error"]) == 0.0475
    assert abs(float(ours["coverage"]) - (coverage_error(truth, probs) - 1) / 5) < 5e-5
    assert abs(float(ours["ranking_loss"]) - test["ranking_loss"]) < 5e-5
    assert abs(float(ours["average_precision"]) - label_ranking_average_precision_score(truth, probs)) < 5e-5
    assert 0.9 < float(ours["average_precision"]) < 1
    mldf = rows["MLDF (Yang et al., ECAI 2020): deep forest on hand-crafted features"]
    assert mldf == {
        "hamming_loss": "0.1480",
        "exact_match": "–",
        "one_error": "0.2390",
        "coverage": "0.1590",
        "ranking_loss": "0.1290",
        "average_precision": "0.8420",
    }
    assert rows["Best honest pixel-trained CNN we know of"]["exact_match"] == "0.5850"
    assert rows["The original project's 4-layer CNN, as it reported"]["hamming_loss"] == "0.1395"
    assert html.count("<strong>5-fold CV</strong>") == 1 + 1 + 1  # the note, our recipe's row and MLDF's row
    cv = rows["efficientnet-lite0, upload augmentation: the training recipe, cross-validated"]
    recorded = scenes.classifier.card.crossval.metrics
    assert cv["coverage"] == f"{recorded['coverage_normalised']['mean']:.4f}"
    for key in ("hamming_loss", "exact_match", "one_error", "ranking_loss", "average_precision"):
        assert cv[key] == f"{recorded[key]['mean']:.4f}", key
    assert float(cv["hamming_loss"]) < 0.148 / 2 and float(cv["average_precision"]) > 0.842  # far past MLDF
    assert "400-photo test split (seed 100: the contract split)" in html


def test_model_without_a_curve(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL_DIR, model, ignore=shutil.ignore_patterns("training_curve.png"))
    from app import create_app

    client = create_app(model_dir=model).test_client()
    r = client.get("/model/training_curve.png")
    assert r.status_code == 404 and "no training_curve.png" in r.get_data(as_text=True)
    assert "has no <code>training_curve.png</code>" in client.get("/model").get_data(as_text=True)
