"""Datasets for the labeller from an uploaded ZIP, extracted safely (model.datasets' member checks).

Three layouts, besides the Kaggle one (handed to model.datasets.import_zip unchanged):
- `labels.csv` (`image,<label>,...`) with 0/1 values, and empty cells for photos not labelled yet (a row is
  either filled in or empty); the photos in `original/` or beside it;
- folder-per-label (Keras `image_dataset_from_directory`, torchvision `ImageFolder`): `sea/x.jpg`,
  `sunset/x.jpg`; a photo (by content) found in several folders gets all of those labels;
- photos alone, anywhere in the ZIP, with the label names given apart (`labels`): none labelled yet.
Every photo is decoded once to check it; those that cannot be read are left out and listed.
"""

import csv
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from model import datasets as limits_of
from model.datasets import CHECK_SIZE, MAT, DatasetError, _check_members, import_zip
from model.modeldir import atomic_dir
from model.preprocess import ImageError, load_image
from workspace.store import Photo

LABEL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
MAX_LABELS = 20
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class Imported:
    label_names: list
    photos: list = field(default_factory=list)  # [Photo], in the dataset's order
    labelled: dict = field(default_factory=dict)  # {image: [labels]} of the photos that came labelled
    skipped: list = field(default_factory=list)  # [{"image", "error"}]


@dataclass
class Entry:
    """A photo to extract: the name it gets, its ZIP member, its labels (None: not labelled)."""

    name: str
    info: zipfile.ZipInfo
    labels: list | None


def label_names(values, where="label names"):
    """The checked list of label names: 1 to 20, letters, digits, '-' and '_', no duplicates; DatasetError."""
    names = [v.strip() for v in values if v.strip()]
    if not 1 <= len(names) <= MAX_LABELS:
        raise DatasetError(f"{where}: give 1 to {MAX_LABELS} label names, not {len(names)}")
    bad = next((n for n in names if not LABEL_NAME.match(n)), None)
    if bad is not None:
        raise DatasetError(f"{where}: {bad!r} is not a label name (letters, digits, '-' and '_', at most 40)")
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:
        raise DatasetError(f"{where}: label names must be unique: {repeated!r} is given twice")
    return names


def read_partial_csv(text, where="labels.csv"):
    """(label names, [(image, labels or None)]) from labels.csv where empty cells mean 'not labelled yet'."""
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    if not rows or len(rows[0]) < 2 or rows[0][0].strip() != "image":
        raise DatasetError(f"{where}: the header must be 'image,<label>,<label>,...'")
    names = label_names(rows[0][1:], where)
    out, seen = [], set()
    for line, row in enumerate(rows[1:], start=2):
        cells = [v.strip() for v in row[1:]]
        image = row[0].strip()
        if len(cells) != len(names) or not (all(c in ("0", "1") for c in cells) or not any(cells)):
            raise DatasetError(
                f"{where}: line {line} must have an image name and {len(names)} values of 0 or 1, "
                "or leave them all empty (not labelled yet)"
            )
        if not image or "/" in image or "\\" in image or image.startswith(".") or image in seen:
            raise DatasetError(f"{where}: line {line} has an invalid image name {image!r} (or one listed before)")
        seen.add(image)
        out.append((image, [n for n, c in zip(names, cells) if c == "1"] if any(cells) else None))
    if not out:
        raise DatasetError(f"{where}: no photos listed")
    return names, out


def _csv_entries(zf, files, path):
    prefix = path[: -len("labels.csv")]
    try:
        text = zf.read(files[path]).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    names, rows = read_partial_csv(text, path)
    entries, skipped = [], []
    for image, labels in rows:
        info = files.get(f"{prefix}original/{image}") or files.get(f"{prefix}{image}")
        if info is None:
            skipped.append({"image": image, "error": "listed in the labels but not in the ZIP"})
        else:
            entries.append(Entry(image, info, labels))
    return names, entries, skipped


def _photo_members(files):
    """[(path parts, ZipInfo)] of the ZIP's photos, with a folder every photo shares left out."""
    photos = [(path.split("/"), info) for path, info in sorted(files.items())]
    photos = [(p, i) for p, i in photos if PurePosixPath(p[-1]).suffix.lower() in PHOTO_SUFFIXES]
    while photos and all(len(p) > 1 for p, _ in photos) and len({p[0] for p, _ in photos}) == 1:
        photos = [(p[1:], i) for p, i in photos]
    return photos


def _folder_entries(photos):
    """Folder-per-label: every photo must sit in a folder named after one of its labels."""
    if not photos:
        raise DatasetError("the ZIP holds no photos (.jpg, .png, .webp, ...)")
    loose = next((info.filename for p, info in photos if len(p) != 2 or p[0] == "original"), None)
    if loose is not None:
        raise DatasetError(
            "no labels.csv in the ZIP and no label names given: give the label names (a comma list), put labels.csv "
            f"(header 'image,<label>,...') beside original/, or use the folder-per-label layout (LABEL/photo.jpg, one "
            f"folder deep); {loose!r} is not in it"
        )
    names = label_names(sorted({p[0] for p, _ in photos}), "the folder names (the labels)")
    return names, [Entry(p[1], info, [p[0]]) for p, info in photos]


def _unique_name(name, taken):
    stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{stem}-{n}{suffix}", n + 1
    return candidate


def _extract(zf, entries, label_order, folder):
    """Check and write each entry's photo to folder/original -> Imported (photos of the same content merged:
    their labels joined)."""
    result = Imported(label_order)
    by_hash, taken = {}, set()
    (folder / "original").mkdir()
    for entry in entries:
        try:
            data = zf.read(entry.info)
            load_image(data, CHECK_SIZE)
        except ImageError as e:
            result.skipped.append({"image": entry.name, "error": str(e)})
            continue
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DatasetError(f"the ZIP member {entry.info.filename!r} is damaged ({e})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest in by_hash:  # the same photo again: one photo, with the labels of both places
            image = by_hash[digest]
            if entry.labels is not None:
                joined = set(result.labelled.get(image, [])) | set(entry.labels)
                result.labelled[image] = [l for l in label_order if l in joined]
            continue
        image = _unique_name(entry.name, taken)
        taken.add(image)
        by_hash[digest] = image
        (folder / "original" / image).write_bytes(data)
        result.photos.append(Photo(image, digest))
        if entry.labels is not None:
            result.labelled[image] = list(entry.labels)
    if not result.photos:
        raise DatasetError(
            "none of the photos could be read: " + "; ".join(f"{s['image']}: {s['error']}" for s in result.skipped[:5])
        )
    return result


def _from_kaggle(source, out, limits):
    """The Kaggle layout, through model.datasets.import_zip; its labels.csv read back."""
    source.seek(0) if hasattr(source, "seek") else None
    result = import_zip(source, out, limits)
    text = (Path(out) / "labels.csv").read_text()
    names, rows = read_partial_csv(text)
    photos = [
        Photo(image, hashlib.sha256((Path(out) / "original" / image).read_bytes()).hexdigest()) for image, _ in rows
    ]
    return Imported(names, photos, {image: labels for image, labels in rows}, result["skipped"])


def import_upload(source, out, labels=None, limits=None):
    """Extract the ZIP `source` (a path or file object) into the new folder `out` (original/ + nothing else)
    -> Imported. `labels`: the label names typed by the user (a comma list), needed for photos alone;
    DatasetError for anything we cannot use (nothing is left in `out`)."""
    limits = {  # model.datasets' limits, read when the upload comes
        "members": limits_of.MAX_MEMBERS,
        "member_bytes": limits_of.MAX_MEMBER_BYTES,
        "total_bytes": limits_of.MAX_TOTAL_BYTES,
        **(limits or {}),
    }
    given = label_names(labels.split(","), "the label names") if labels and labels.strip() else None
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError):
        raise DatasetError("the file is not a ZIP archive (or it is damaged)") from None
    with zf:
        files = _check_members(zf, limits)
        csvs = sorted((p.count("/"), p) for p in files if p.split("/")[-1] == "labels.csv")
        skipped = []
        if csvs:
            names, entries, skipped = _csv_entries(zf, files, csvs[0][1])
            if given and given != names:
                raise DatasetError(
                    f"the label names given ({', '.join(given)}) are not labels.csv's ({', '.join(names)})"
                )
        elif any(p.endswith(MAT) for p in files):
            return _from_kaggle(source, out, limits)
        elif given:
            names = given
            entries = [Entry(p[-1], info, None) for p, info in _photo_members(files)]
            if not entries:
                raise DatasetError("the ZIP holds no photos (.jpg, .png, .webp, ...)")
        else:
            names, entries = _folder_entries(_photo_members(files))
        with atomic_dir(out) as tmp:
            result = _extract(zf, entries, names, tmp)
    result.skipped = skipped + result.skipped
    return result
