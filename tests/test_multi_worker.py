"""`model.train --distribute multi-worker`: two worker processes on 127.0.0.1 (TF_CONFIG, free ports), one
replica each with 16 photos a step, against one process training the same global batch of 32.

Tolerance: once dropout is taken out, the two runs compute the same steps; only the order of float32 sums
differs (each worker sums the gradient of its half batch, then the all-reduce adds the halves), so the
test predictions agree to 1e-6 here; the test allows 1e-4, as the mirrored-strategy test does. Dropout is
taken out (in these processes only) because it is the one thing that cannot match: each worker draws the
masks of its own half batch, which are not the rows of the single worker's mask for those photos, so with
dropout a two-worker run is another sample of the same training (its predictions differ by up to 0.1 after
this run's two steps), not the same numbers."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from model.modeldir import read_model_dir
from tests.helpers import ROOT, TINY_TRAINING

WITHOUT_DROPOUT = (
    "import sys, keras; keras.layers.Dropout.call = lambda self, x, training=None: x; "
    "from model.train import main; main(sys.argv[1:])"
)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def train(tiny_dataset, out, *args, tf_config=None):
    env = {**os.environ, **({"TF_CONFIG": json.dumps(tf_config)} if tf_config else {})}
    return subprocess.Popen(
        [sys.executable, "-c", WITHOUT_DROPOUT, "--data", str(tiny_dataset), "--out", str(out), *TINY_TRAINING, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow  # two workers and one process train
def test_two_workers_train_the_model_one_worker_trains(tiny_dataset, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = [
        train(
            tiny_dataset,
            tmp_path / f"worker{i}",
            "--batch-size",
            "16",
            "--distribute",
            "multi-worker",
            tf_config={"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}},
        )
        for i in range(2)
    ]  # each worker its own --out: here they share one disk
    procs.append(train(tiny_dataset, tmp_path / "one", "--batch-size", "32"))
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], [o[-3000:] for o in outputs]
    chief, other, one = (read_model_dir(tmp_path / name) for name in ("worker0", "worker1", "one"))
    assert chief.card.training.replicas == 2 and chief.card.training.batch_size == 32
    two = chief.test_predictions()[2]
    np.testing.assert_array_equal(other.test_predictions()[2], two)  # all-reduced: every worker has the same weights
    np.testing.assert_allclose(two, one.test_predictions()[2], atol=1e-4)
    for a, b in zip(chief.card.training.history, one.card.training.history, strict=True):
        np.testing.assert_allclose([float(a[k]) for k in sorted(a)], [float(b[k]) for k in sorted(a)], rtol=1e-5)


def test_multi_worker_needs_tf_config(tiny_dataset, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.train",
            "--data",
            str(tiny_dataset),
            "--out",
            str(tmp_path / "m"),
            "--distribute",
            "multi-worker",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "needs TF_CONFIG" in r.stderr and "Traceback" not in r.stderr
