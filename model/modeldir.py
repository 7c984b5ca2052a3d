"""The model directory: what training writes and everything else reads.

    model.keras            the trained network (loaded in Keras safe mode)
    thresholds.json        labels, per-label thresholds and how they were chosen   } the model card
    metrics.json           architecture, training protocol, validation and test metrics }  (ModelCard)
    test_predictions.csv   image, true labels, probabilities for every test photo
    training_curve.png     loss and mAP per epoch
    familiarity.npz        the training photos' embeddings and the "unfamiliar photo" threshold (model.familiarity)

`ModelCard` is the only code that reads and writes thresholds.json and metrics.json: everything else uses its
attributes (`card.training.architecture`, `card.split.seed`, `card.tuning.criterion`, ...). Keys it does not know
are kept (`extra`) and written back, so a rewrite never loses anything. Both files carry `"version"`
(CARD_VERSION); a file without one is version 1, the layouts written before the card (no "tta", no "replicas",
no literature metrics, ...), which still load, their missing parts read as absent (None) or their defaults.

The directory is written to a temporary sibling and renamed into place, so a run killed halfway
leaves the previous model intact.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from model.backbones.torch_legacy import sha256_of

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "shipped"
FILES = ["model.keras", "thresholds.json", "metrics.json", "test_predictions.csv"]
# Test-time augmentation the thresholds were tuned with (thresholds.json "tta"): none, or the mean of the
# photo and its mirror image ("flip").
TTA_MODES = ("none", "flip")
MAX_JSON_BYTES = 2_000_000  # thresholds.json and metrics.json are a few kB; refuse to read a huge one whole
CARD_VERSION = 2  # thresholds.json and metrics.json's "version"; 1 = written before it existed (no key)

Scores = dict[str, Any]  # model.metrics.evaluate's answer: headline metrics, n_images, per_label


class ModelDirError(Exception):
    """The model directory is missing a file or holds a malformed one; the message names it."""


# --- the model card ---------------------------------------------------------------------------------------
def _key(f) -> str:
    """The JSON key of a dataclass field (its name unless the field says otherwise, e.g. "from")."""
    return f.metadata.get("key", f.name)


def _from_json(cls, data: dict, **decoders: Callable[[Any], Any]):
    """An instance of dataclass `cls` from its JSON object: known keys to fields (through `decoders` where a
    field holds a dataclass), the others kept in `extra`."""
    known = {_key(f): f.name for f in fields(cls) if f.name != "extra"}
    values, extra = {}, {}
    for key, value in data.items():
        if key in known:
            name = known[key]
            values[name] = decoders[name](value) if name in decoders and value is not None else value
        else:
            extra[key] = value
    return cls(**values, extra=extra)


def _to_json(obj) -> dict:
    """The JSON object of a card dataclass: its fields in order (None ones left out), then its extra keys."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name == "extra" or value is None:
            continue
        if isinstance(value, list):
            value = [v.to_json() if hasattr(v, "to_json") else v for v in value]
        out[_key(f)] = value.to_json() if hasattr(value, "to_json") else value
    return {**out, **obj.extra}


@dataclass
class OperatingPoint:
    """thresholds.json "other_tta": the thresholds tuned on validation for the other TTA mode."""

    tta: str = "none"
    thresholds: dict[str, float] = field(default_factory=dict)
    at_least_one: bool = False
    at_least_one_check: dict | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return _to_json(self)


@dataclass
class Tuning:
    """thresholds.json: the labels, their thresholds and how they were chosen (on validation only)."""

    labels: list[str]
    thresholds: dict[str, float]  # label -> threshold
    criterion: str | None = None  # model.thresholds.CRITERIA
    grid: str | None = None  # the thresholds tried, in words
    chosen_on: str | None = None  # which photos, in words
    at_least_one: bool = False  # the "at least one label" rule (kept only if it helps on validation)
    at_least_one_check: dict | None = None  # {"without": {...}, "with": {...}} validation scores
    tta: str = "none"  # the TTA mode these thresholds belong to
    other_tta: OperatingPoint | None = None  # the thresholds tuned for the other mode, when tuned
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict, path: Path) -> Tuning:
        """Checked (ModelDirError naming `path` if malformed)."""
        _check_thresholds(path, data)
        tuning = _from_json(cls, data, other_tta=lambda v: _from_json(OperatingPoint, v))
        tuning.extra.pop("version", None)  # the card's, read from metrics.json
        return tuning

    def to_json(self) -> dict:
        return {**_to_json(self), "version": CARD_VERSION}

    def operating_point(self, tta: str) -> tuple[np.ndarray, bool] | None:
        """(thresholds in label order, at_least_one) tuned on validation for TTA mode `tta`, or None."""
        if tta == self.tta:
            point = self
        elif self.other_tta is not None and self.other_tta.tta == tta:
            point = self.other_tta
        else:
            return None
        return np.array([point.thresholds[l] for l in self.labels], np.float32), point.at_least_one


@dataclass
class Training:
    """metrics.json "training": how the network was made (full training, quick mode's head, or an ensemble,
    whose `members` are their own Training records with `from_model`, the member's directory name)."""

    mode: str | None = None  # "quick" for quick mode; absent for model.train ("full")
    from_model: str | None = field(default=None, metadata={"key": "from"})  # an ensemble member's source
    architecture: str | None = None
    input_size: int | None = None
    parameters: int | None = None
    backbone: str | None = None  # quick mode: the frozen backbone's model directory
    head: str | None = None  # quick mode: what the head is
    regularisation: dict[str, float] | None = field(default=None, metadata={"key": "C"})  # quick: C per label
    epochs_run: int | None = None
    warmup_epochs: int | None = None
    max_epochs: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    replicas: int | None = None
    augment: str | None = None
    schedule: str | None = None
    early_lr: float | None = None
    label_smoothing: float | None = None
    mixup: float | None = None
    seed: int | None = None
    members: list[Training] | None = None  # an ensemble's
    minutes: float | None = None
    dataset: str | None = None  # the dataset directory it was trained on
    checkpoint: str | None = None
    created: str | None = None  # ISO time (quick mode); full runs: model.keras's time
    history: list[dict] | None = None  # CSVLogger rows (strings), warm-up first
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> Training:
        return _from_json(cls, data, members=lambda rows: [Training.from_json(r) for r in rows])

    def to_json(self) -> dict:
        return _to_json(self)


@dataclass
class Split:
    """metrics.json "split": which photos were trained, validated and tested on."""

    seed: int | None = None  # model.data.split's random_state (CONTRACT_SPLIT_SEED: the contract split)
    fold: str | None = None  # "K/N" for a cross-validation fold
    train: int | None = None
    validation: int | None = None
    test: int | None = None
    test_images: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return _to_json(self)


@dataclass
class Retuned:
    """metrics.json "retuned": the thresholds were tuned again (model.retune) under `tta`."""

    from_model: str | None = field(default=None, metadata={"key": "from"})
    tta: str | None = None
    criterion: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return _to_json(self)


@dataclass
class CrossVal:
    """metrics.json "crossval": the training recipe cross-validated (model.crossval --record-in)."""

    folds: int | None = None
    train_args: list[str] | None = None
    metrics: dict[str, dict] | None = None  # metric -> {"mean", "std", "folds": [...]}
    architecture: str | None = None
    augment: str | None = None
    test_photos: int | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return _to_json(self)


@dataclass
class ModelCard:
    """thresholds.json and metrics.json as one typed record: what a model is, how it was trained and tuned,
    and how it scored. `validation` and `test` are model.metrics.evaluate's answers."""

    tuning: Tuning  # thresholds.json
    training: Training
    split: Split = field(default_factory=Split)
    validation: Scores = field(default_factory=dict)
    test: Scores = field(default_factory=dict)
    retuned: Retuned | None = None
    crossval: CrossVal | None = None
    version: int = CARD_VERSION  # as read; written as CARD_VERSION
    extra: dict = field(default_factory=dict)  # metrics.json's keys the card does not know

    @property
    def labels(self) -> list[str]:
        return self.tuning.labels

    @classmethod
    def read(cls, folder: Path | str) -> ModelCard:
        """The card of the model directory `folder`; ModelDirError naming the file if one is missing or malformed."""
        folder = Path(folder)
        tuning = Tuning.from_json(_read_json(folder / "thresholds.json"), folder / "thresholds.json")
        return cls.from_json(tuning, _read_json(folder / "metrics.json"), folder / "metrics.json")

    @classmethod
    def from_json(cls, tuning: Tuning, metrics: Any, path: Path) -> ModelCard:
        """The card from thresholds.json's Tuning and metrics.json's content (checked: ModelDirError naming `path`)."""
        if (
            not isinstance(metrics, dict)
            or not all(isinstance(metrics.get(k), dict) for k in ("test", "validation", "training"))
            or not isinstance(metrics.get("split", {}), dict)
            or not all(isinstance(metrics.get(k) or {}, dict) for k in ("retuned", "crossval"))
        ):
            raise ModelDirError(f"{path}: needs 'training', 'validation' and 'test' sections")
        if not isinstance(metrics.get("training", {}).get("members") or [], list):
            raise ModelDirError(f"{path}: 'members' must be a list")
        metrics = {k: v for k, v in metrics.items() if k != "labels"}  # thresholds.json's are the labels
        card = _from_json(
            cls,
            {**metrics, "tuning": tuning},
            training=Training.from_json,
            split=lambda v: _from_json(Split, v),
            retuned=lambda v: _from_json(Retuned, v),
            crossval=lambda v: _from_json(CrossVal, v),
        )
        card.version = metrics.get("version", 1)
        return card

    def thresholds_json(self) -> dict:
        """thresholds.json's content."""
        return self.tuning.to_json()

    def metrics_json(self) -> dict:
        """metrics.json's content (the sections in the order training writes them)."""
        out = {"labels": self.labels, **_to_json(self)}
        out.pop("tuning")
        out["version"] = CARD_VERSION
        if not self.split.to_json():
            out.pop("split")  # none recorded (quick mode's ImageNet backbone)
        return out

    def write(self, folder: Path | str) -> None:
        """Write thresholds.json and metrics.json into `folder`, each atomically."""
        folder = Path(folder)
        write_atomically(folder / "thresholds.json", _dumps(self.thresholds_json()))
        write_atomically(folder / "metrics.json", _dumps(self.metrics_json()))


def _dumps(value: Any) -> bytes:
    return (json.dumps(_clean(value), indent=2) + "\n").encode()


# --- the model directory -------------------------------------------------------------------------------------
@dataclass
class ModelDir:
    """A checked model directory (its card read, the network not yet loaded)."""

    path: Path
    card: ModelCard

    @property
    def labels(self) -> list[str]:
        return self.card.labels

    @property
    def thresholds(self) -> np.ndarray:
        """The tuned thresholds in label order, float32."""
        return np.array([self.card.tuning.thresholds[l] for l in self.labels], dtype=np.float32)

    @property
    def at_least_one(self) -> bool:
        return self.card.tuning.at_least_one

    @functools.cached_property
    def sha256(self) -> str:
        """sha256 of model.keras: what the LiteRT, atlas and embedding caches are keyed by (read once)."""
        return sha256_of(self.path / "model.keras")

    def load_keras(self) -> Any:
        """The Keras model, uncompiled, in safe mode; ModelDirError for a damaged archive."""
        if not zipfile.is_zipfile(self.path / "model.keras"):
            raise ModelDirError(f"{self.path / 'model.keras'}: not a Keras archive (truncated or damaged)")
        import keras

        try:
            return keras.saving.load_model(self.path / "model.keras", compile=False, safe_mode=True)
        except Exception as e:  # Keras raises many types for a damaged archive
            raise ModelDirError(f"{self.path / 'model.keras'}: cannot load the model ({e})") from None

    @property
    def tta(self) -> str:
        return self.card.tuning.tta

    def operating_point(self, tta: str) -> tuple[np.ndarray, bool] | None:
        """(thresholds, at_least_one) tuned on validation for TTA mode `tta`, or None where none were."""
        return self.card.tuning.operating_point(tta)

    def test_predictions(self) -> tuple[list[str], np.ndarray, np.ndarray]:
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


def _read_json(path: Path) -> Any:
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_thresholds(path: Path, info: Any) -> None:
    """ModelDirError naming `path` unless thresholds.json's content `info` is well formed."""
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


def read_model_dir(path: Path | str | None = None) -> ModelDir:
    """Read and validate a model directory (the shipped one by default) without loading the network."""
    path = Path(path or SHIPPED_MODEL_DIR)
    if not path.is_dir():
        raise ModelDirError(f"{path}: model directory not found")
    for name in FILES:
        if not (path / name).is_file():
            raise ModelDirError(f"{path / name}: missing")
    return ModelDir(path, ModelCard.read(path))


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN to None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def write_atomically(path: Path | str, data: bytes) -> None:
    """Write bytes `data` to `path` through a temporary sibling renamed into place: readers see the old file or
    the new one, never half of one (the name is unique per process and thread, so writers do not collide)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(out: Path | str) -> Iterator[Path]:
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
    out: Path | str,
    model: Any,
    card: ModelCard,
    test_images: Sequence[str],
    test_truth: Sequence[Sequence[int]],
    test_probs: Sequence[Sequence[float]],
    draw_curve: Callable[[Path], None],
    extra_files: dict[str, bytes] | None = None,
) -> None:
    """Write every file of the model directory `out` (the Keras `model`, its `card`, the test predictions and
    `draw_curve(path)`'s training curve), atomically (see atomic_dir); `extra_files`: {name: bytes} written beside
    them (familiarity.npz)."""
    with atomic_dir(out) as tmp:
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        model.save(tmp / "model.keras")
        card.write(tmp)
        labels = card.labels
        with open(tmp / "test_predictions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image"] + [f"true_{l}" for l in labels] + [f"p_{l}" for l in labels])
            for name, truth, probs in zip(test_images, test_truth, test_probs):
                writer.writerow([name, *map(int, truth), *(f"{p:.6f}" for p in probs)])
        draw_curve(tmp / "training_curve.png")
