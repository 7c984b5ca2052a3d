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

from model.preprocess import ImageError, load_image

CONTRACT_SPLIT_SEED = (
    100  # train_test_split(ids, test_size=0.2, random_state=100): the original project's 400 test photos
)
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2
MAX_PHOTOS = 20_000  # rows of a labels file
MAX_LABELS = 100
MAX_LABEL_CHARS = 64
MAX_NAME_BYTES = 200  # an image's file name, UTF-8 (file systems allow 255)
MAX_CSV_BYTES = 4 << 20  # 20,000 rows of 100 labels and a long name fit
MAX_MAT_BYTES = 8 << 20  # Kaggle's file, `bags` and all, is about 1 MB


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


def _read_csv(path, unlabelled=False):
    """(images, labels, label names) of a labels.csv, read a row at a time: refused (DataError naming the file
    and line) at the first row past MAX_PHOTOS, a field over the csv module's limit, a repeated image or a label
    name that cannot be shown as it is. A UTF-8 byte-order mark is allowed.

    `labels` is a uint8 array (photos x labels); with `unlabelled` (the labeller's uploads), a row whose values
    are all empty means "not labelled yet", and `labels` is a list of 0/1 lists with None for those rows."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise DataError(f"{path}: {size:,} bytes, over the {MAX_CSV_BYTES:,}-byte limit for labels.csv")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                return _parse_csv(path, reader, unlabelled)
            except csv.Error as e:
                raise DataError(f"{path}: line {reader.line_num} is not valid CSV ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def _label_names(path, header):
    if not header or len(header) < 2 or header[0].strip() != "image":
        raise DataError(f"{path}: the header must be 'image,<label>,<label>,...'")
    names = [name.strip() for name in header[1:]]
    if len(names) > MAX_LABELS:
        raise DataError(f"{path}: {len(names)} labels; at most {MAX_LABELS} are allowed")
    if len(set(names)) != len(names) or not all(names):
        raise DataError(f"{path}: label names must be unique and non-empty")
    for name in names:
        if len(name) > MAX_LABEL_CHARS or not name.isprintable():
            raise DataError(
                f"{path}: the label {name[:40]!r} must be at most {MAX_LABEL_CHARS} printable characters "
                "(no control characters, line breaks or direction overrides)"
            )
    return names


def _parse_csv(path, reader, unlabelled=False):
    label_names = _label_names(path, next(reader, None))
    empty = ", or leave them all empty (not labelled yet)" if unlabelled else ""
    images, labels, seen = [], [], {}
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(images) == MAX_PHOTOS:
            raise DataError(f"{path}: line {line}: more than {MAX_PHOTOS:,} photos; at most that many are allowed")
        values = [v.strip() for v in row[1:]]
        blank = unlabelled and not any(values)
        if len(row) != len(label_names) + 1 or not (blank or all(v in ("0", "1") for v in values)):
            raise DataError(
                f"{path}: line {line} must have an image name and {len(label_names)} values of 0 or 1{empty}"
            )
        name = row[0].strip()
        if not name or "/" in name or "\\" in name or name.startswith(".") or len(name.encode()) > MAX_NAME_BYTES:
            raise DataError(f"{path}: line {line} has an invalid image name {name[:40]!r}")
        if name in seen:
            raise DataError(f"{path}: line {line} lists {name[:40]!r} again (first on line {seen[name]})")
        seen[name] = line
        images.append(name)
        labels.append(None if blank else [int(v) for v in values])
    if not images:
        raise DataError(f"{path}: no photos listed")
    return images, labels if unlabelled else np.array(labels, dtype=np.uint8), label_names


def _read_mat(path):
    """(images, labels, label names) of the Kaggle `.mat` file, its declared sizes checked before it is read."""
    from model.matfile import MatError, read_kaggle_mat

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_MAT_BYTES:
            raise DataError(f"{path}: {size:,} bytes, over the {MAX_MAT_BYTES:,}-byte limit for the .mat file")
        mat = read_kaggle_mat(path.read_bytes())
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    except MatError as e:
        raise DataError(f"{path}: {e}") from None
    targets = mat.get("targets")
    if targets is None or targets.ndim != 2 or not np.isin(targets, (-1, 1)).all():
        raise DataError(f"{path}: needs a 'targets' matrix (labels x photos) of -1/+1 values")
    if not 1 <= targets.shape[0] <= MAX_LABELS or not 1 <= targets.shape[1] <= MAX_PHOTOS:
        raise DataError(
            f"{path}: 'targets' is {targets.shape[0]}x{targets.shape[1]}; at most {MAX_LABELS} labels "
            f"x {MAX_PHOTOS:,} photos are allowed"
        )
    names = mat.get("class_name")
    if names is None or names.size != targets.shape[0]:
        raise DataError(
            f"{path}: needs 'class_name' with one name for each of the {targets.shape[0]} rows of 'targets'"
        )
    try:
        label_names = [str(np.asarray(n).ravel()[0]).strip() for n in names.ravel()]
    except IndexError:
        raise DataError(f"{path}: 'class_name' has an empty name") from None
    _label_names(path, ["image", *label_names])
    images = [f"{i}.jpg" for i in range(1, targets.shape[1] + 1)]
    return images, (targets.T > 0).astype(np.uint8), label_names


def check_labels_vary(labels, label_names):
    """DataError for a label that every photo of the training split has, or none: quick and full training
    refuse it alike (a classifier cannot learn it)."""
    labels = np.asarray(labels)
    for j, name in enumerate(label_names):
        if labels[:, j].min() == labels[:, j].max():
            have = "every" if labels[0, j] else "no"
            raise DataError(
                f"label {name!r}: {have} photo of the training split has it; a label needs photos with and without it"
            )


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
    from sklearn.model_selection import train_test_split  # here, not at the top: a CLI's errors come before it

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
    from sklearn.model_selection import StratifiedKFold, train_test_split

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
