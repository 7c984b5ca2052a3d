"""The labelled photo collection: reading it, and splitting it into train / validation / test.

Two layouts are read, both with the photos in `original/`:
- `labels.csv`: header `image,<label>,<label>,...`, one row per photo, 0/1 values;
- the Kaggle archive `processed/miml data.mat`: `targets` (labels x photos, -1/+1)
  and `class_name`; photo i (1-based) is `original/i.jpg`.
Label names come from the data, never from this code.
"""

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from model.preprocess import ImageError, load_image

CONTRACT_SPLIT_SEED = (
    100  # train_test_split(ids, test_size=0.2, random_state=100): the original project's 400 test photos
)
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2


class DataError(Exception):
    """The dataset is missing or malformed; the message names the file."""


@dataclass
class Dataset:
    root: Path
    images: list  # file names inside original/, in dataset order
    labels: np.ndarray  # (n_photos, n_labels) uint8
    label_names: list

    def path(self, index):
        return self.root / "original" / self.images[index]

    def load_photos(self, indices, size, workers=4):
        """Decode the photos at `indices` into a uint8 array (n, size, size, 3)."""

        def load(i):
            try:
                return load_image(self.path(i), size)
            except (ImageError, OSError) as e:
                raise DataError(f"{self.path(i)}: {e}") from None

        with ThreadPoolExecutor(workers) as pool:
            return np.stack(list(pool.map(load, indices)))


def _read_csv(path):
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not rows or len(rows[0]) < 2 or rows[0][0].strip() != "image":
        raise DataError(f"{path}: the header must be 'image,<label>,<label>,...'")
    label_names = [name.strip() for name in rows[0][1:]]
    if len(set(label_names)) != len(label_names) or not all(label_names):
        raise DataError(f"{path}: label names must be unique and non-empty")
    images, labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(rows[0]) or any(v.strip() not in ("0", "1") for v in row[1:]):
            raise DataError(f"{path}: line {line} must have an image name and {len(label_names)} values of 0 or 1")
        name = row[0].strip()
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise DataError(f"{path}: line {line} has an invalid image name {name!r}")
        images.append(name)
        labels.append([int(v) for v in row[1:]])
    if not images:
        raise DataError(f"{path}: no photos listed")
    return images, np.array(labels, dtype=np.uint8), label_names


def _read_mat(path):
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises several types for damaged files
        raise DataError(f"{path}: cannot read the .mat file ({e})") from None
    targets = mat.get("targets")
    if targets is None or targets.ndim != 2 or not np.isin(targets, (-1, 1)).all():
        raise DataError(f"{path}: needs a 'targets' matrix (labels x photos) of -1/+1 values")
    names = mat.get("class_name")
    if names is None or names.size != targets.shape[0]:
        raise DataError(
            f"{path}: needs 'class_name' with one name for each of the {targets.shape[0]} rows of 'targets'"
        )
    label_names = [str(np.asarray(n).ravel()[0]).strip() for n in names.ravel()]
    images = [f"{i}.jpg" for i in range(1, targets.shape[1] + 1)]
    return images, (targets.T > 0).astype(np.uint8), label_names


def load_dataset(directory=None):
    """Read the dataset from `directory`, else from $MIML_DATA."""
    directory = directory or os.environ.get("MIML_DATA")
    if not directory:
        raise DataError("no dataset given: pass --data DIR or set MIML_DATA")
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found")
    csv_path, mat_path = root / "labels.csv", root / "processed" / "miml data.mat"
    if csv_path.exists():
        images, labels, label_names = _read_csv(csv_path)
    elif mat_path.exists():
        images, labels, label_names = _read_mat(mat_path)
    else:
        raise DataError(f"{root}: neither labels.csv nor 'processed/miml data.mat' found")
    for name in images:
        if not (root / "original" / name).is_file():
            raise DataError(f"{root / 'original' / name}: photo listed in the labels but not found")
    return Dataset(root, images, labels, label_names)


def split(n_photos, split_seed=CONTRACT_SPLIT_SEED):
    """Indices (train, val, test). The default seed gives the contract split of the original project."""
    ids = np.arange(1, n_photos + 1)
    rest, test = train_test_split(ids, test_size=TEST_FRACTION, random_state=split_seed)
    train, val = train_test_split(rest, test_size=VAL_FRACTION, random_state=split_seed)
    return train - 1, val - 1, test - 1


def fold_split(labels, folds, fold, seed=0):
    """Indices (train, val, test) for fold `fold` (0-based) of a `folds`-fold cross-validation over every photo:
    test = that fold; validation = 20% of the other folds (the training part, where the checkpoint and the
    thresholds are chosen); train = the rest. Folds and validation are stratified by label set; sets with
    fewer than 2 * `folds` photos are pooled, so that every stratum can be split (a dataset too small for
    that gets an unstratified validation part)."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is not one of 0..{folds - 1}")
    sets = np.array(["".join(map(str, row)) for row in np.asarray(labels)])
    names, counts = np.unique(sets, return_counts=True)
    sets = np.where(np.isin(sets, names[counts < 2 * folds]), "rare", sets)
    rest, test = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(sets, sets))[fold]
    try:
        train, val = train_test_split(rest, test_size=VAL_FRACTION, random_state=seed, stratify=sets[rest])
    except ValueError:  # a small dataset: too few photos in a stratum to stratify the validation part
        train, val = train_test_split(rest, test_size=VAL_FRACTION, random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)
