"""model.retune: thresholds tuned again on validation for a TTA mode, the network untouched."""

import pytest

from model.modeldir import SHIPPED_MODEL_DIR, read_model_dir
from tests.helpers import run


@pytest.mark.slow  # the shipped model on the 720 validation and test photos
@pytest.mark.needs_data
def test_retuning_the_shipped_model_reproduces_its_thresholds_and_metrics(miml_data, tmp_path):
    from model.retune import retune

    out = tmp_path / "retuned"
    shipped = read_model_dir(SHIPPED_MODEL_DIR)
    retune(SHIPPED_MODEL_DIR, miml_data, shipped.tta, out)  # "none": the ensemble's one pass
    again = read_model_dir(out)
    for key in ("thresholds", "at_least_one", "tta", "other_tta", "chosen_on"):
        assert getattr(again.card.tuning, key) == getattr(shipped.card.tuning, key), key
    assert again.card.test["hamming_loss"] == pytest.approx(shipped.card.test["hamming_loss"])
    assert again.card.validation["exact_match"] == pytest.approx(shipped.card.validation["exact_match"])
    assert again.test_predictions()[0] == shipped.test_predictions()[0]
    assert (out / "training_curve.png").read_bytes() == (SHIPPED_MODEL_DIR / "training_curve.png").read_bytes()


def test_retune_refuses_to_replace_without_force(tmp_path):
    (tmp_path / "out").mkdir()
    for name in ("model.keras", "thresholds.json"):
        (tmp_path / "out" / name).write_text("an earlier model")
    before = (SHIPPED_MODEL_DIR / "thresholds.json").read_bytes()
    r = run("model.retune", "--model", str(SHIPPED_MODEL_DIR), "--tta", "flip", "--out", str(tmp_path / "out"))
    out = tmp_path / "out"
    assert (
        r.returncode != 0 and r.stderr == f"error: {out}: already holds a model directory; pass --force to replace it\n"
    )
    assert (SHIPPED_MODEL_DIR / "thresholds.json").read_bytes() == before
    assert (out / "model.keras").read_text() == "an earlier model"
