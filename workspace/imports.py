"""Datasets for the labeller from an uploaded ZIP, through model.datasets' guarded steps (member checks and
limits, the quota, bounded reading of the labels file, the decoded-pixel cap, the photo size limit).

Four layouts:
- `labels.csv` (`image,<label>,...`) with 0/1 values, and empty cells for photos not labelled yet (a row is
  either filled in or empty); the photos in `original/` or beside it;
- the Kaggle one (`processed/miml data.mat` + `original/N.jpg`);
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

from model.data import DataError, _read_csv
from model.datasets import (
    DatasetError,
    _check_members,
    checked_photos,
    find_labels,
    import_limits,
    open_zip,
    read_labels,
)
from model.modeldir import atomic_dir
from workspace.store import Photo

LABEL_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")  # matched whole (fullmatch)
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
    bad = next((n for n in names if not LABEL_NAME.fullmatch(n)), None)
    if bad is not None:
        raise DatasetError(f"{where}: {bad!r} is not a label name (letters, digits, '-' and '_', at most 40)")
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:
        raise DatasetError(f"{where}: label names must be unique: {repeated!r} is given twice")
    return names


def read_labels_csv(path):
    """(label names, [(image, labels or None)]) of a labels.csv in the runs folder, where empty cells mean 'not
    labelled yet' (model.data's bounded reader, then the labeller's rule for label names); DatasetError."""
    try:
        images, rows, names = _read_csv(path, unlabelled=True)
    except DataError as e:
        raise DatasetError(str(e).replace(str(path), Path(path).name)) from None
    return label_names(names, Path(path).name), _labelled_rows(images, rows, names)


def labels_csv_text(names, rows):
    """labels.csv's text: the header `image,<names>`, then a row of 0/1 per (image, its labels) of `rows` (what
    model.data reads; the labeller's export and the feedback folder both write it)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", *names])
    writer.writerows([image, *(int(n in labels) for n in names)] for image, labels in rows)
    return out.getvalue()


def _labelled_rows(images, rows, names):
    """[(image, [labels] or None)] from the rows of 0/1 values (None: not labelled yet)."""
    return [(image, None if row is None else [n for n, v in zip(names, row) if v]) for image, row in zip(images, rows)]


def _file_entries(zf, files, found, folder):
    """(label names, [Entry], skipped) of the photos the ZIP's labels file lists (labels.csv or the Kaggle .mat)."""
    prefix, kind = found
    images, rows, names = read_labels(zf, files, prefix, kind, folder, unlabelled=True)
    names = label_names(names, prefix + ("labels.csv" if kind == "csv" else "the .mat file's class_name"))
    entries, skipped = [], []
    for image, labels in _labelled_rows(images, rows, names):
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


def _extract(zf, entries, label_order, folder, skipped):
    """Write each usable entry's photo to folder/original -> Imported (photos of the same content merged: their
    labels joined); photos left out are added to `skipped`."""
    result = Imported(label_order, skipped=skipped)
    by_hash, taken = {}, set()
    (folder / "original").mkdir()
    for i, data in checked_photos(zf, [(e.name, e.info) for e in entries], skipped):
        entry = entries[i]
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
            "none of the photos could be read: " + "; ".join(f"{s['image']}: {s['error']}" for s in skipped[:5])
        )
    return result


def import_upload(source, out, labels=None, limits=None):
    """Extract the ZIP `source` (a path or file object) into the new folder `out` (original/ + nothing else)
    -> Imported. `labels`: the label names typed by the user (a comma list), needed for photos alone;
    `limits`: model.datasets.import_limits (the runs folder's quota). DatasetError (DiskQuotaError past the quota)
    for anything we cannot use: nothing is left in `out`."""
    given = label_names(labels.split(","), "the label names") if labels and labels.strip() else None
    with open_zip(source) as zf, atomic_dir(out) as tmp:
        files = _check_members(zf, limits or import_limits())
        found = find_labels(files)
        skipped = []
        if found:
            names, entries, skipped = _file_entries(zf, files, found, tmp)
            if given and given != names:
                raise DatasetError(
                    f"the label names given ({', '.join(given)}) are not the labels file's ({', '.join(names)})"
                )
        elif given:
            names = given
            entries = [Entry(p[-1], info, None) for p, info in _photo_members(files)]
            if not entries:
                raise DatasetError("the ZIP holds no photos (.jpg, .png, .webp, ...)")
        else:
            names, entries = _folder_entries(_photo_members(files))
        return _extract(zf, entries, names, tmp, skipped)
