"""The command-line tools, end to end, on a model trained on generated 3-label photos."""

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from model.modeldir import read_model_dir
from model.evaluate import main as evaluate
from model.predict import main as predict
from tests.helpers import ROOT, TINY_LABELS, TINY_TRAINING, call, run


@pytest.mark.slow  # the session's tiny model trains
def test_training_writes_a_complete_model_directory(tiny_model):
    files = {p.name for p in tiny_model.iterdir()}
    assert {"model.keras", "thresholds.json", "metrics.json", "test_predictions.csv", "training_curve.png"} <= files
    info = read_model_dir(tiny_model)
    assert info.labels == TINY_LABELS  # label names travel from the data, nothing hard-coded
    assert info.card.test["n_images"] == 8 and set(info.card.test["per_label"]) == set(TINY_LABELS)
    names, truth, probs = info.test_predictions()
    assert len(names) == 8 and truth.shape == probs.shape == (8, 3)
    assert "validation" in info.card.tuning.chosen_on
    assert not tiny_model.with_name(tiny_model.name + ".training").exists()


@pytest.mark.slow  # the session's tiny model trains
def test_predict_lines_json_and_errors(tiny_model, tiny_dataset, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not a photo")
    good = tiny_dataset / "original" / "1.jpg"
    r = call(predict, good, bad, "--model", tiny_model)  # in this process: the output is the test, not the process
    assert r.returncode == 1
    assert r.stdout.startswith(f"{good}: ") and "red " in r.stdout and "blue " in r.stdout
    assert f"{bad}: error: not an image format" in r.stderr and "Traceback" not in r.stderr
    r = call(predict, tiny_dataset / "original", bad, "--model", tiny_model, "--json")
    results = json.loads(r.stdout)
    assert len(results) == 37 and sum("error" in x for x in results) == 1
    ok = results[0]
    assert set(ok["probabilities"]) == set(TINY_LABELS) and set(ok["predicted"]) <= set(TINY_LABELS)


@pytest.mark.slow  # the session's tiny model trains
def test_evaluate_prints_table_and_writes_json(tiny_model, tiny_dataset, tmp_path):
    out = tmp_path / "m.json"
    # Keras float32, as training computed the stored metrics (a one-epoch model's probabilities sit near its
    # thresholds); the other runtimes' agreement with Keras is the parity gate's, and Keras needs no conversion
    r = call(evaluate, "--data", tiny_dataset, "--model", tiny_model, "--json", out, "--runtime", "keras")
    assert r.returncode == 0, r.stderr
    assert "hamming_loss" in r.stdout and "(8 photos)" in r.stdout
    metrics = json.loads(out.read_text())
    for key in (
        "hamming_loss",
        "exact_match",
        "micro_f1",
        "macro_f1",
        "samples_f1",
        "map",
        "ranking_loss",
        "one_error",
        "coverage",
        "n_images",
        "per_label",
    ):
        assert key in metrics
    stored = read_model_dir(tiny_model).card.test
    assert metrics["hamming_loss"] == pytest.approx(stored["hamming_loss"])  # same photos, same model, same answer
    assert set(metrics["per_label"]["red"]) >= {"precision", "recall", "f1", "mcc", "ap", "threshold"}


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("model.evaluate", "--data", "/nonexistent/data"), "/nonexistent/data: dataset directory not found"),
        (
            ("model.train", "--data", "/nonexistent/data", "--out", "/nonexistent/out"),
            "/nonexistent/data: dataset directory not found",
        ),
        (("model.predict", "x.jpg", "--model", "/nonexistent/model"), "/nonexistent/model: model directory not found"),
        (
            ("model.export", "--format", "saved_model", "--out", "/nonexistent/out", "--model", "/nonexistent/model"),
            "/nonexistent/model: model directory not found",
        ),
        (("visualization", "--model", "/nonexistent/model"), "/nonexistent/model: model directory not found"),
    ],
)
def test_cli_errors_are_one_line(args, fragment):
    r = run(*args)
    assert r.returncode != 0
    assert r.stderr == f"error: {fragment}\n"  # nothing else: TensorFlow's start-up lines are kept quiet too


def test_verbose_shows_the_traceback_and_tensorflow_start_up_lines(tmp_path):
    r = run("model.predict", "x.jpg", "--model", "/nonexistent/model", "--verbose")
    assert "Traceback (most recent call last)" in r.stderr  # found before TensorFlow starts: no start-up lines
    assert r.stderr.endswith("error: /nonexistent/model: model directory not found\n")
    r = run("model.predict", str(tmp_path / "x.jpg"), "--runtime", "keras", "--verbose")  # the shipped model loads
    assert "oneDNN custom operations are on" in r.stderr
    assert r.stderr.endswith(f"{tmp_path / 'x.jpg'}: error: No such file or directory\n")


@pytest.mark.slow  # the session's tiny model trains
def test_corrupt_model_file_is_a_clear_error(tiny_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "thresholds.json").write_text('{"labels": ["red"], "thresholds": {"red": 7}}')
    r = call(predict, "x.jpg", "--model", broken)
    assert r.returncode == 1 and "thresholds.json" in r.stderr and "Traceback" not in r.stderr
    shutil.copy(tiny_model / "thresholds.json", broken / "thresholds.json")
    (broken / "model.keras").write_bytes(b"garbage")
    r = call(predict, "x.jpg", "--model", broken)
    assert r.returncode == 1 and "model.keras" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # the session's tiny model trains
def test_training_refuses_to_replace_a_model_directory_without_force(tiny_model, tiny_dataset):
    from model.train import main

    before = (tiny_model / "metrics.json").read_bytes()
    with pytest.raises(SystemExit, match=f"^error: {tiny_model}: already holds a model directory; pass --force"):
        main(["--data", str(tiny_dataset), "--out", str(tiny_model), *TINY_TRAINING])
    assert (tiny_model / "metrics.json").read_bytes() == before
    assert not tiny_model.with_name(tiny_model.name + ".training").exists()


@dataclass
class Resumed:
    """A run of the tiny model's training stopped after both phases, just before writing, then started again."""

    out: Path  # the model directory it wrote, over an earlier one (--force)
    stopped: str  # what the stopped run printed
    warnings: list  # the warnings it raised
    kept_before_writing: bool  # the earlier directory's stray file was still there when it stopped
    resumed: str  # what the second run printed


@pytest.fixture(scope="module")
def resumed(tiny_dataset, tmp_path_factory):
    """The tiny model's command again, with --distribute mirrored (MirroredStrategy: one replica on a CPU), stopped
    after both phases and started again. One run serves two tests (reproducible and resumable; mirrored matches
    plain), as each of them had a training of its own."""
    import warnings

    from model import train

    again = tmp_path_factory.mktemp("resumed") / "again"
    again.mkdir()
    for name in ("model.keras", "thresholds.json", "old.txt"):  # an earlier model directory: --force replaces it
        (again / name).write_text("replaced with --force")
    argv = ["--data", str(tiny_dataset), "--out", str(again), *TINY_TRAINING, "--distribute", "mirrored", "--force"]

    def killed(*args):
        raise KeyboardInterrupt

    stopped = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "write_model_dir", killed)  # stopped after both phases, before writing
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stopped):
            warnings.simplefilter("always")
            with pytest.raises(KeyboardInterrupt):
                train.main(argv)
    kept = (again / "old.txt").exists()
    resumed = io.StringIO()
    with contextlib.redirect_stdout(resumed):
        train.main(argv)  # resumes from again.training: both phases are done, so it only writes
    return Resumed(again, stopped.getvalue(), list(caught), kept, resumed.getvalue())


@pytest.mark.slow  # the session's tiny model trains
def test_training_is_reproducible_resumable_and_quiet(tiny_model, resumed):
    import re

    assert not [w for w in resumed.warnings if "shuffle" in str(w.message)]
    assert re.search(r"^warm-up \(head only\): up to 1 epochs$", resumed.stopped, re.M)
    assert re.search(
        r"^fine-tuning \(whole network\): epoch 1/1 took \d+ s; at most 0.0 min left in this phase",
        resumed.stopped,
        re.M,
    )
    assert resumed.kept_before_writing
    assert "warm-up" not in resumed.resumed and "fine-tuning" not in resumed.resumed and "wrote" in resumed.resumed
    assert not (resumed.out / "old.txt").exists() and not resumed.out.with_name("again.training").exists()
    first, second = (read_model_dir(p).test_predictions()[2] for p in (tiny_model, resumed.out))
    np.testing.assert_allclose(first, second, atol=1e-4)


@pytest.mark.slow  # the session's tiny model trains
def test_mirrored_strategy_on_cpu_matches_plain_training(tiny_model, resumed):
    mirrored = read_model_dir(resumed.out)
    assert mirrored.card.training.replicas == 1
    np.testing.assert_allclose(
        mirrored.test_predictions()[2], read_model_dir(tiny_model).test_predictions()[2], atol=1e-4
    )


def test_unwritable_output_directory(tiny_dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = run("model.train", "--data", str(tiny_dataset), "--out", str(blocker / "model"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(blocker) in line


@pytest.mark.slow  # the session's tiny model trains
def test_interrupted_write_leaves_previous_model_intact(tiny_model, tmp_path):
    import shutil
    from model.modeldir import ModelCard, Training, Tuning, write_model_dir
    from model.inference import Classifier

    target = tmp_path / "model"
    shutil.copytree(tiny_model, target)
    before = (target / "thresholds.json").read_text()

    def crash(path):
        raise KeyboardInterrupt  # killed while drawing the last file

    classifier = Classifier(target, runtime="keras")  # its Keras model is what is written
    with pytest.raises(KeyboardInterrupt):
        card = ModelCard(Tuning(labels=["x"], thresholds={"x": 0.5}), Training())
        write_model_dir(target, classifier.model, card, [], [], [], crash)
    assert (target / "thresholds.json").read_text() == before
    assert read_model_dir(target).labels == TINY_LABELS


def test_phase_progress_prints_each_epoch_and_the_time_left(monkeypatch, capsys):
    import keras
    from model import train

    clock = iter([0.0, 60.0, 60.0, 150.0])  # epoch 1 takes 60 s, epoch 2 takes 90 s
    monkeypatch.setattr(train.time, "time", lambda: next(clock))
    callback = train.phase_progress(keras, "fine-tuning", 4)
    callback.on_train_begin({})
    for epoch in range(2):
        callback.on_epoch_begin(epoch, {})
        callback.on_epoch_end(epoch, {})
    assert capsys.readouterr().out.splitlines() == [
        "fine-tuning: up to 4 epochs",
        "fine-tuning: epoch 1/4 took 60 s; at most 3.0 min left in this phase (early stopping may end it sooner)",
        "fine-tuning: epoch 2/4 took 90 s; at most 2.5 min left in this phase (early stopping may end it sooner)",
    ]


THREADED_REDIRECTS = """
import os, sys, threading, time
from model.cli import without_start_up_noise

before = os.fstat(2).st_ino
def build(i):  # what two request threads building LiteRT interpreters at once do
    with without_start_up_noise():
        time.sleep(0.05 * (i + 1))
        os.write(2, b"line from thread %d\\n" % i)
threads = [threading.Thread(target=build, args=(i,)) for i in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(os.fstat(2).st_ino == before)
"""


def test_overlapping_stderr_redirects_from_threads_leave_stderr_intact():
    """Four threads inside without_start_up_noise at once: fd 2 is the original stderr afterwards, every line
    they wrote reaches it (before the lock, stderr ended up pointing at a deleted temporary file)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", THREADED_REDIRECTS], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "True", done.stderr
    assert sorted(done.stderr.split("\n")[:-1]) == [f"line from thread {i}" for i in range(4)]
