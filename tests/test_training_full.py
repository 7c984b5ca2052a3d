"""Full mode: `python -m model.train` as the job's subprocess, kept tiny (the 36-photo tiny dataset, one warm-up
and one fine-tuning epoch at 96 pixels); its epochs become progress, an ETA and the learning curve."""

import os
import time

import pytest

from model.inference import Classifier
from tests.helpers import TINY_LABELS, follow, train_processes
from workspace import Registry, RegistryError

pytestmark = pytest.mark.slow  # each test starts a training job

TINY = ["--warmup-epochs", "1", "--input-size", "96"]


@pytest.fixture()
def registry(tmp_path, tiny_dataset):
    return Registry(tmp_path / "runs", data_dir=tiny_dataset)


def test_full_mode_reports_epochs_eta_and_the_curve(registry):
    job = registry.start_job("data", "full", epochs=1, train_args=TINY)
    seen = follow(registry, job)
    final = seen[-1]
    assert final["state"] == "done", final
    assert final["model"] == job and final["progress"] == 1.0
    messages = [s["message"] for s in seen]
    assert "warm-up (head only): epoch 1/1" in messages and "fine-tuning (whole network): epoch 1/1" in messages
    assert not any(m.startswith("Epoch ") for m in messages)  # never Keras's raw "Epoch 1/1"
    after_warmup = next(s for s in seen if s["message"] == "warm-up (head only): epoch 1/1")
    assert after_warmup["eta_s"] is not None and after_warmup["eta_s"] >= 0 and 0 < after_warmup["progress"] < 1
    assert [p["epoch"] for p in final["curve"]] == [1, 2]
    assert all(p["loss"] > 0 and p["val_loss"] > 0 for p in final["curve"])
    log = (registry.root / "jobs" / job / "log.txt").read_text()  # what model.train prints for people, JSON apart
    assert "warm-up (head only): epoch 1/1 took" in log and '"phase"' not in log
    listed = {m["id"]: m for m in registry.models()}
    assert listed[job]["mode"] == "full" and listed[job]["labels"] == TINY_LABELS and listed[job]["dataset"] == "data"
    c = Classifier(registry.model_path(job), runtime="keras")  # the directory's contents: no OpenVINO conversion
    assert c.size == 96 and c.labels == TINY_LABELS
    assert c.training_photos is not None  # full training keeps its training photos' embeddings for familiarity
    assert final["seconds"] > 0 and final["photos"] == 36  # the training page's times are made of these
    history = c.card.training.history
    assert [round(float(r["val_loss"]), 4) for r in history] == [round(p["val_loss"], 4) for p in final["curve"]]


def test_cancelling_a_full_job_stops_model_train_too(registry):
    job = registry.start_job("data", "full", epochs=5, train_args=TINY)
    started = time.time()
    while not train_processes(job):
        assert time.time() - started < 60 and registry.job(job).state in ("queued", "running")
        time.sleep(0.2)
    status = registry.cancel_job(job)
    assert status.state == "cancelled"
    time.sleep(0.5)
    assert train_processes(job) == []
    runs = registry.root / "models"
    assert not any(p.name.startswith(job) for p in runs.iterdir())
    with pytest.raises(RegistryError, match="already ended"):
        registry.cancel_job(job)
    assert os.path.isdir(registry.root / "jobs" / job)  # its status stays readable


def test_a_job_process_that_dies_is_reported_failed_and_takes_model_train_with_it(registry):
    import signal

    job = registry.start_job("data", "full", epochs=5, train_args=TINY)
    started = time.time()
    while not train_processes(job):
        assert time.time() - started < 60
        time.sleep(0.2)
    os.kill(
        registry._children[job].pid, signal.SIGKILL
    )  # the job's process alone, as if the server's machine had killed it
    registry._children[job].join(10)
    status = registry.job(job)
    assert status.state == "failed" and status.message == "the training process ended unexpectedly (exit code -9)"
    deadline = time.time() + 10
    while train_processes(job) and time.time() < deadline:
        time.sleep(0.2)
    assert train_processes(job) == []
