"""The model directory: what training writes and everything else reads.

    model.keras            the trained network (loaded in Keras safe mode)
    thresholds.json        labels, per-label thresholds and how they were chosen
    metrics.json           architecture, training protocol, validation and test metrics
    test_predictions.csv   image, true labels, probabilities for every test photo
    training_curve.png     loss and mAP per epoch
    familiarity.npz        the training photos' embeddings and the "unfamiliar photo" threshold (model.familiarity)

It is written to a temporary sibling and renamed into place, so a run killed halfway
leaves the previous model intact.
"""

import contextlib
import csv
import functools
import json
import math
import os
import shutil
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.backbones.torch_legacy import sha256_of

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "shipped"
FILES = ["model.keras", "thresholds.json", "metrics.json", "test_predictions.csv"]
# Test-time augmentation the thresholds were tuned with (thresholds.json "tta"): none, or the mean of the
# photo and its mirror image ("flip").
TTA_MODES = ("none", "flip")
MAX_JSON_BYTES = 2_000_000  # thresholds.json and metrics.json are a few kB; refuse to read a huge one whole


class ModelDirError(Exception):
    """The model directory is missing a file or holds a malformed one; the message names it."""


@dataclass
class ModelDir:
    path: Path
    labels: list
    thresholds: np.ndarray
    at_least_one: bool
    thresholds_info: dict
    metrics: dict

    @functools.cached_property
    def sha256(self):
        """sha256 of model.keras: what the LiteRT, atlas and embedding caches are keyed by (read once)."""
        return sha256_of(self.path / "model.keras")

    def load_keras(self):
        if not zipfile.is_zipfile(self.path / "model.keras"):
            raise ModelDirError(f"{self.path / 'model.keras'}: not a Keras archive (truncated or damaged)")
        import keras

        try:
            return keras.saving.load_model(self.path / "model.keras", compile=False, safe_mode=True)
        except Exception as e:  # Keras raises many types for a damaged archive
            raise ModelDirError(f"{self.path / 'model.keras'}: cannot load the model ({e})") from None

    @property
    def tta(self):
        return self.thresholds_info.get("tta", "none")

    def operating_point(self, tta):
        """(thresholds, at_least_one) tuned on validation for TTA mode `tta`, or None where none were."""
        if tta == self.tta:
            return self.thresholds, self.at_least_one
        other = self.thresholds_info.get("other_tta")
        if other and other.get("tta", "none") == tta:
            return np.array([other["thresholds"][l] for l in self.labels], np.float32), other.get("at_least_one", False)
        return None

    def test_predictions(self):
        """(image names, true 0/1 labels, probabilities) of the stored test predictions."""
        path = self.path / "test_predictions.csv"
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            names = [r["image"] for r in rows]
            truth = np.array([[int(r[f"true_{l}"]) for l in self.labels] for r in rows], dtype=np.uint8)
            probs = np.array([[float(r[f"p_{l}"]) for l in self.labels] for r in rows], dtype=np.float32)
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ModelDirError(f"{path}: malformed ({e})") from None
        return names, truth.reshape(-1, len(self.labels)), probs.reshape(-1, len(self.labels))


def _read_json(path):
    """The parsed file, refused (ModelDirError naming it) when missing, over MAX_JSON_BYTES or malformed."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelDirError(
                f"{path}: {size:,} bytes, over the {MAX_JSON_BYTES:,}-byte limit for a model directory's JSON"
            )
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ModelDirError(f"{path}: missing") from None
    except RecursionError:
        raise ModelDirError(f"{path}: not valid JSON (nested too deeply)") from None
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{path}: not valid JSON ({e})") from None


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_thresholds(path, info):
    """(labels, thresholds array, at_least_one) from thresholds.json's content; ModelDirError naming `path` if malformed."""
    labels = info.get("labels") if isinstance(info, dict) else None
    if not isinstance(labels, list) or not labels or not all(isinstance(l, str) and l for l in labels):
        raise ModelDirError(f"{path}: needs 'labels', a list of label names")
    twice = sorted({l for l in labels if labels.count(l) > 1})
    if twice:
        raise ModelDirError(f"{path}: label {twice[0]!r} appears more than once in 'labels'")
    table = info.get("thresholds")
    if not isinstance(table, dict) or set(table) != set(labels):
        raise ModelDirError(f"{path}: needs 'thresholds', one entry for each of the labels")
    for label in labels:
        if not (_is_number(table[label]) and 0 <= table[label] <= 1):
            raise ModelDirError(
                f"{path}: the threshold of {label!r} is {json.dumps(table[label])}, not a number from 0 to 1"
            )
    if not isinstance(info.get("at_least_one", False), bool):
        raise ModelDirError(f"{path}: 'at_least_one' must be true or false")
    if info.get("tta", "none") not in TTA_MODES:
        raise ModelDirError(f"{path}: 'tta' must be one of {', '.join(TTA_MODES)}")
    other = info.get("other_tta")
    if other is not None:  # the thresholds tuned on validation for the other TTA mode, checked the same way
        if not isinstance(other, dict) or other.get("tta", "none") == info.get("tta", "none") or "other_tta" in other:
            raise ModelDirError(f"{path}: 'other_tta' must hold the thresholds of the other TTA mode")
        _check_thresholds(path, {**other, "labels": labels})
    return labels, np.array([table[l] for l in labels], dtype=np.float32), info.get("at_least_one", False)


def read_model_dir(path=None):
    """Read and validate a model directory (the shipped one by default) without loading the network."""
    path = Path(path or SHIPPED_MODEL_DIR)
    if not path.is_dir():
        raise ModelDirError(f"{path}: model directory not found")
    for name in FILES:
        if not (path / name).is_file():
            raise ModelDirError(f"{path / name}: missing")
    info = _read_json(path / "thresholds.json")
    labels, thresholds, at_least_one = _check_thresholds(path / "thresholds.json", info)
    metrics = _read_json(path / "metrics.json")
    if (
        not isinstance(metrics, dict)
        or not all(isinstance(metrics.get(k), dict) for k in ("test", "validation", "training"))
        or not isinstance(metrics.get("split", {}), dict)
    ):
        raise ModelDirError(f"{path / 'metrics.json'}: needs 'training', 'validation' and 'test' sections")
    return ModelDir(path, labels, thresholds, at_least_one, info, metrics)


def _clean(value):
    """JSON-safe: numpy scalars to Python, NaN to None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def write_atomically(path, data):
    """Write bytes `data` to `path` through a temporary sibling renamed into place: readers see the old file or
    the new one, never half of one (the name is unique per process and thread, so writers do not collide)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(out):
    """Yield an empty temporary sibling `OUT.partial-write`; once the block succeeds, swap it in for `out`.

    A block that fails (or a process killed in it) leaves the previous `out` as it was."""
    out = Path(out)
    tmp, old = out.with_name(out.name + ".partial-write"), out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists() and not out.exists():
                os.replace(old, out)  # put the previous one back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_model_dir(
    out, model, thresholds_info, metrics, test_images, test_truth, test_probs, draw_curve, extra_files=None
):
    """Write every file of the model directory `out`, atomically (see atomic_dir); `extra_files`: {name: bytes}
    written beside them (familiarity.npz)."""
    with atomic_dir(out) as tmp:
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        model.save(tmp / "model.keras")
        (tmp / "thresholds.json").write_text(json.dumps(_clean(thresholds_info), indent=2) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(_clean(metrics), indent=2) + "\n")
        labels = thresholds_info["labels"]
        with open(tmp / "test_predictions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image"] + [f"true_{l}" for l in labels] + [f"p_{l}" for l in labels])
            for name, truth, probs in zip(test_images, test_truth, test_probs):
                writer.writerow([name, *map(int, truth), *(f"{p:.6f}" for p in probs)])
        draw_curve(tmp / "training_curve.png")
