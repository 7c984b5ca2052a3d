"""model.train's errors: our own types (a bad dataset, an --out in the way, a malformed --fold) are one line
naming what is wrong, and --verbose adds their traceback; any other exception is a bug and keeps its traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def train(*args):
    command = [sys.executable, "-m", "model.train", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two runs of model.train, TensorFlow's start-up twice
def test_our_errors_are_one_line_and_verbose_adds_the_traceback(tiny_dataset, tmp_path):
    args = ["--data", tiny_dataset, "--out", tmp_path / "out", "--fold", "3/2"]
    quiet = train(*args)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1] == "error: --fold 3/2: K must be 1..N and N at least 2"
    verbose = train(*args, "--verbose")
    assert verbose.returncode == 1 and "Traceback (most recent call last)" in verbose.stderr
    assert "raise TrainError" in verbose.stderr and "model/train.py" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == "error: --fold 3/2: K must be 1..N and N at least 2"


def test_an_unknown_architecture_is_one_line(tiny_dataset, tmp_path):
    from model.train import main

    message = (
        "error: unknown architecture 'resnet-50'; choose one of efficientnet-lite0, efficientnet-lite1, "
        "efficientnet-lite2, seed-cnn"
    )
    with pytest.raises(SystemExit) as stopped:
        main(["--data", str(tiny_dataset), "--out", str(tmp_path / "out"), "--arch", "resnet-50"])
    assert stopped.value.code == message  # sys.exit's one line, printed on stderr with exit status 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.training").exists()


def test_a_value_error_from_a_bug_is_not_turned_into_one_line(tiny_dataset, tmp_path, monkeypatch):
    from model import train as module

    def broken(path):  # a bug deep inside: a ValueError that no user input explains
        raise ValueError("could not broadcast input array from shape (3,) into shape (2,)")

    monkeypatch.setattr(module, "load_dataset", broken)
    with pytest.raises(ValueError, match="could not broadcast"):
        module.main(["--data", str(tiny_dataset), "--out", str(tmp_path / "out")])
