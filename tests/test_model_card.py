"""The model card (model.modeldir.ModelCard): the one reader and writer of thresholds.json and metrics.json.
Its JSON round-trips key for key; a version 1 directory (the layout written before the card: no "tta", no
"replicas", no literature metrics) still loads and serves; model.train's progress lines reach the registry."""

import csv
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from model.modeldir import (
    CARD_VERSION,
    SHIPPED_MODEL_DIR,
    ModelCard,
    ModelDirError,
    Split,
    Training,
    Tuning,
    read_model_dir,
)

LABELS = ["desert", "mountains", "sea", "sunset", "trees"]


def shipped_json(name):
    return json.loads((SHIPPED_MODEL_DIR / name).read_text())


def test_the_shipped_card_round_trips_key_for_key(tmp_path):
    card = ModelCard.read(SHIPPED_MODEL_DIR)
    assert card.version == 1  # written before the card had a version
    assert card.training.architecture == "efficientnet-lite0 + efficientnet-lite1 (ensemble)"
    assert [m.from_model for m in card.training.members] == ["e1-upload", "e3-lite1-224"]
    assert card.training.members[1].architecture == "efficientnet-lite1" and card.training.members[0].replicas == 1
    assert card.split.seed == 100 and card.split.test == len(card.split.test_images) == 400
    assert card.tuning.tta == "none" and card.tuning.other_tta.tta == "flip" and card.tuning.at_least_one is True
    assert card.retuned.from_model == "ens-e1e3" and card.crossval.folds == 5
    assert card.test["hamming_loss"] == 0.0515

    metrics, thresholds = card.metrics_json(), card.thresholds_json()
    assert metrics.pop("version") == thresholds.pop("version") == CARD_VERSION
    assert metrics == shipped_json("metrics.json") and thresholds == shipped_json("thresholds.json")
    assert list(metrics) == list(shipped_json("metrics.json"))  # the same order too: a rewrite reads the same
    assert list(metrics["training"]) == list(shipped_json("metrics.json")["training"])

    card.write(tmp_path)
    again = ModelCard.read(tmp_path)
    assert again.version == CARD_VERSION
    again.version = card.version
    assert again == card


def test_unknown_keys_are_kept_and_written_back(tmp_path):
    card = ModelCard(
        Tuning(labels=["a", "b"], thresholds={"a": 0.5, "b": 0.25}, criterion="f1"),
        Training(architecture="seed-cnn", input_size=100, history=[]),
        Split(seed=7, train=3, validation=1, test=1, test_images=["5.jpg"]),
        validation={"n_images": 1},
        test={"n_images": 1},
    )
    card.training.extra["optimizer_note"] = "from a later version"
    card.extra["notes"] = {"by": "someone"}
    card.write(tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["training"]["optimizer_note"] == "from a later version" and metrics["notes"] == {"by": "someone"}
    assert "retuned" not in metrics and "crossval" not in metrics and "fold" not in metrics["split"]
    assert ModelCard.read(tmp_path) == card


def test_a_malformed_section_names_the_file(tmp_path):
    ModelCard(Tuning(labels=["a"], thresholds={"a": 0.5}), Training()).write(tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    (tmp_path / "metrics.json").write_text(json.dumps({**metrics, "crossval": [1, 2]}))
    with pytest.raises(ModelDirError, match=r"metrics\.json: needs 'training', 'validation' and 'test' sections"):
        ModelCard.read(tmp_path)


# --- a version 1 model directory, as the first version of model.train wrote it ------------------------------
V1_THRESHOLDS = {
    "labels": LABELS,
    "thresholds": {"desert": 0.21, "mountains": 0.175, "sea": 0.695, "sunset": 0.365, "trees": 0.145},
    "criterion": "mcc",
    "grid": "0.02..0.98 in steps of 0.005",
    "chosen_on": "validation split: 320 photos (split seed 100); never the test split",
    "at_least_one": True,
    "at_least_one_check": {
        "without": {"hamming_loss": 0.0425, "exact_match": 0.80625},
        "with": {"hamming_loss": 0.04125, "exact_match": 0.8125},
    },
}


def v1_scores(n_images, hamming_loss, exact_match):
    """metrics.json's scores as version 1 wrote them: no coverage_normalised, average_precision nor log_loss."""
    per_label = {
        l: {"precision": 0.9, "recall": 0.9, "f1": 0.9, "mcc": 0.88, "ap": 0.95, "threshold": t, "support": 80}
        for l, t in V1_THRESHOLDS["thresholds"].items()
    }
    return {
        "hamming_loss": hamming_loss,
        "exact_match": exact_match,
        "micro_f1": 0.8728728728728729,
        "macro_f1": 0.8734516278221169,
        "samples_f1": 0.8874166666666667,
        "map": 0.9432683230488269,
        "ranking_loss": 0.03166666666666666,
        "one_error": 0.0725,
        "coverage": 0.37749999999999995,
        "n_images": n_images,
        "per_label": per_label,
    }


@pytest.fixture(scope="module")
def v1_model(tmp_path_factory):
    """The shipped network and test predictions under version 1's thresholds.json and metrics.json."""
    folder = tmp_path_factory.mktemp("v1") / "model"
    folder.mkdir()
    for name in ("model.keras", "test_predictions.csv"):
        (folder / name).symlink_to(SHIPPED_MODEL_DIR / name)
    with open(SHIPPED_MODEL_DIR / "test_predictions.csv", newline="") as f:
        test_images = [row["image"] for row in csv.DictReader(f)]
    metrics = {
        "labels": LABELS,
        "training": {
            "architecture": "efficientnet-lite0",
            "input_size": 224,
            "parameters": 3419429,
            "epochs_run": 8,
            "warmup_epochs": 2,
            "max_epochs": 20,
            "learning_rate": 0.0003,
            "batch_size": 32,
            "seed": 0,
            "minutes": 6.6,
            "dataset": "/work/shared/miml",
            "checkpoint": "lowest validation loss",
            "history": [
                {"epoch": "0", "loss": "0.4789", "map": "0.5128", "val_loss": "0.3353", "val_map": "0.8323"},
                {"epoch": "0", "loss": "0.2301", "map": "0.8911", "val_loss": "0.1702", "val_map": "0.9401"},
            ],
        },
        "split": {"seed": 100, "train": 1280, "validation": 320, "test": 400, "test_images": test_images},
        "validation": v1_scores(320, 0.04125, 0.8125),
        "test": v1_scores(400, 0.0635, 0.735),
    }
    (folder / "thresholds.json").write_text(json.dumps(V1_THRESHOLDS, indent=2) + "\n")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return folder


def test_a_version_1_directory_reads_with_its_defaults(v1_model, tmp_path):
    info = read_model_dir(v1_model)
    card = info.card
    assert card.version == 1 and info.labels == LABELS
    assert info.tta == "none" and card.tuning.other_tta is None  # tuned without TTA, one operating point
    assert info.operating_point("flip") is None
    np.testing.assert_array_equal(info.thresholds, np.float32([0.21, 0.175, 0.695, 0.365, 0.145]))
    assert card.training.architecture == "efficientnet-lite0" and card.training.learning_rate == 0.0003
    assert card.training.replicas is None and card.training.augment is None and card.training.mode is None
    assert card.split.seed == 100 and card.split.fold is None and card.retuned is None and card.crossval is None
    assert "average_precision" not in card.test and card.test["exact_match"] == 0.735

    copy = tmp_path / "rewritten"
    shutil.copytree(v1_model, copy, symlinks=True)
    card.write(copy)  # a rewrite (as model.crossval --record-in does) keeps every key and adds the version
    for name in ("thresholds.json", "metrics.json"):
        old, new = json.loads((v1_model / name).read_text()), json.loads((copy / name).read_text())
        assert new.pop("version") == CARD_VERSION
        if name == "thresholds.json":
            assert new.pop("tta") == "none"  # the default, now written out
        assert new == old, name
    assert ModelCard.read(copy).tuning == card.tuning


def test_a_version_1_directory_serves_the_app(v1_model):
    from app import create_app

    client = create_app(model_dir=v1_model).test_client()
    model = client.get("/api/model").get_json()
    assert model["architecture"] == "efficientnet-lite0" and model["parameters"] == 3419429
    assert model["thresholds"] == pytest.approx(V1_THRESHOLDS["thresholds"]) and model["at_least_one"] is True
    assert model["metrics"]["test"]["hamming_loss"] == 0.0635 and "average_precision" not in model["metrics"]["test"]
    html = client.get("/model").get_data(as_text=True)
    assert "<th>Architecture</th><td>efficientnet-lite0: ImageNet-pretrained" in html
    assert "2 epochs training the head alone" in html and "8 epochs in all" in html
    assert "desert 0.210 · mountains 0.175 · sea 0.695 · sunset 0.365 · trees 0.145" in html
    assert "split seed 100: the original project's test photos" in html
    assert "(seed 100: the contract split)" in html  # the comparison row, its average precision computed
    evaluation = client.get("/evaluation").get_data(as_text=True)
    assert "Thresholds were chosen on validation split: 320 photos (split seed 100)" in evaluation


# --- model.train's progress lines, read by the registry --------------------------------------------------------
def test_the_registry_reads_model_train_progress_lines():
    """The lines model.train writes (its Progress and epoch callback) become the job's progress, ETA and curve."""
    import keras

    from workspace.jobs import follow_progress
    from model.train import Progress, phase_progress

    channel = io.StringIO()
    progress, times = Progress(channel), []
    progress("setup", 0.03, "reading the dataset")
    for phase, epochs, before in (("warm-up (head only)", 1, 0), ("fine-tuning (whole network)", 2, 1)):
        callback = phase_progress(keras, phase, epochs, progress, before, 3, times)
        callback.on_train_begin({})
        for epoch in range(epochs):
            callback.on_epoch_begin(epoch, {})
            callback.on_epoch_end(epoch, {"loss": 0.5 / (before + epoch + 1), "val_loss": 0.4, "map": 0.7})
    progress("failed", 0.0, "error: the disk is full")
    lines = channel.getvalue().splitlines(keepends=True)
    assert all(json.loads(line)["phase"] for line in lines)  # every line one JSON object

    reports, log = [], io.StringIO()
    failed = follow_progress(
        ["Epoch 1/1 (a library's own line)\n", *lines], lambda *a, **k: reports.append((a, k)), log
    )
    assert failed == "error: the disk is full" and log.getvalue() == "Epoch 1/1 (a library's own line)\n"
    messages = [a[1] for a, _ in reports]
    assert messages == [
        "reading the dataset",
        "warm-up (head only): up to 1 epochs",
        "warm-up (head only): epoch 1/1",
        "fine-tuning (whole network): up to 2 epochs",
        "fine-tuning (whole network): epoch 1/2",
        "fine-tuning (whole network): epoch 2/2",
    ]
    epochs = [a for a, _ in reports if "epoch" in a[1] and "up to" not in a[1]]
    assert [round(a[0], 4) for a in epochs] == [0.35, 0.65, 0.95]  # 5% + 90% of the epochs done
    assert all(a[2] is not None and a[2] >= 0 for a in epochs) and epochs[-1][2] == 0
    assert reports[0][0][2] is None  # no ETA before an epoch has run
    curve = reports[-1][1]["curve"]
    assert [p["epoch"] for p in curve] == [1, 2, 3] and [p["loss"] for p in curve] == [0.5, 0.25, 0.5 / 3]
    assert all(p["val_loss"] == 0.4 for p in curve)


def test_train_reports_a_failure_on_its_progress_channel_too(tmp_path):
    progress = tmp_path / "progress.jsonl"
    command = ["model.train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    r = subprocess.run(
        [sys.executable, "-m", *command, "--progress-json", str(progress)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nowhere'}: dataset directory not found"
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert lines[0] == {"phase": "setup", "progress": 0.03, "message": "reading the dataset", "eta_s": None}
    assert lines[-1] == {
        "phase": "failed",
        "progress": 0.0,
        "message": f"error: {tmp_path / 'nowhere'}: dataset directory not found",
        "eta_s": None,
    }
