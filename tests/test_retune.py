"""model.retune: thresholds tuned again on validation for a TTA mode, the network untouched."""

import pytest

from model.modeldir import SHIPPED_MODEL_DIR, read_model_dir
from tests.helpers import run


@pytest.mark.slow  # the session's tiny model trains
def test_retuning_reproduces_the_thresholds_and_metrics_training_chose(tiny_model, tiny_dataset, tmp_path):
    """Retuning under the model's own TTA mode chooses what model.train chose, on the same validation photos; the
    other mode is tuned beside it. (The shipped ensemble reproduces its thresholds too, but that costs 100 CPU-s:
    3,440 forward passes.)"""
    from model.retune import retune

    out = tmp_path / "retuned"
    trained = read_model_dir(tiny_model)
    retune(tiny_model, tiny_dataset, trained.tta, out)
    again = read_model_dir(out)
    for key in ("thresholds", "at_least_one", "tta", "chosen_on", "criterion"):
        assert getattr(again.card.tuning, key) == getattr(trained.card.tuning, key), key
    assert again.card.tuning.other_tta.tta == "flip" and set(again.card.tuning.other_tta.thresholds) == {
        "red",
        "green",
        "blue",
    }
    assert again.card.test["hamming_loss"] == pytest.approx(trained.card.test["hamming_loss"])
    assert again.card.validation["exact_match"] == pytest.approx(trained.card.validation["exact_match"])
    assert again.card.retuned.from_model == tiny_model.name
    names, truth, probs = again.test_predictions()
    assert names == trained.test_predictions()[0]
    assert abs(probs - trained.test_predictions()[2]).max() < 1e-4  # the network untouched
    assert (out / "training_curve.png").read_bytes() == (tiny_model / "training_curve.png").read_bytes()


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
