"""Datasets from ZIP files, extracted safely into a folder of the runs directory.

A ZIP holds `labels.csv` (`image,<label>,...`, 0/1) with the photos in `original/` or beside it, or the
Kaggle layout (`processed/miml data.mat` + `original/N.jpg`), at its top or inside one folder. Every member
name is checked before anything is written (none may lead outside the dataset's folder), the number of
members and their stated sizes are limited (zipfile never inflates a member past its stated size), and
every listed photo is decoded once: photos that cannot be read are left out and listed by name.
"""

import csv
import re
import secrets
import stat
import zipfile
from pathlib import Path, PurePosixPath

from model.data import DataError, _read_csv, _read_mat
from model.modeldir import atomic_dir
from model.preprocess import ImageError, load_image

MAX_MEMBERS = 20_000
MAX_MEMBER_BYTES = 64 << 20  # one member, uncompressed
MAX_TOTAL_BYTES = 1 << 30  # all members, uncompressed
CHECK_SIZE = 224  # photos are decoded (and letterboxed) once at the model's input size to check them
MAT = "processed/miml data.mat"


class DatasetError(ValueError):
    """The upload is not a dataset we can use; the message says what is wrong, for a person."""


def member_parts(name):
    """The member's path parts inside the dataset folder; DatasetError for a name that leads outside it."""
    parts = PurePosixPath(name).parts
    if "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\0" in name:
        raise DatasetError(
            f"the ZIP member {name!r} would be written outside the dataset's folder; nothing was extracted"
        )
    return [p for p in parts if p != "."]


def _hidden(parts):
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _check_members(zf, limits):
    """{path inside the ZIP: ZipInfo} of its files, after the checks that come before any writing."""
    infos = zf.infolist()
    if len(infos) > limits["members"]:
        raise DatasetError(f"the ZIP has {len(infos):,} members; at most {limits['members']:,} are allowed")
    files, total = {}, 0
    for info in infos:
        parts = member_parts(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(f"the ZIP member {info.filename!r} is a symbolic link; nothing was extracted")
        if info.is_dir() or _hidden(parts):
            continue
        if info.file_size > limits["member_bytes"]:
            raise DatasetError(
                f"the ZIP member {info.filename!r} inflates to {info.file_size:,} bytes, over the "
                f"{limits['member_bytes']:,}-byte limit for one file"
            )
        total += info.file_size
        files["/".join(parts)] = info
    if total > limits["total_bytes"]:
        raise DatasetError(f"the ZIP inflates to {total:,} bytes, over the {limits['total_bytes']:,}-byte limit")
    return files


def _find_labels(files):
    """(folder prefix, 'csv' or 'mat') of the shallowest labels.csv or Kaggle .mat file."""
    found = sorted((p.count("/"), p) for p in files if p.split("/")[-1] == "labels.csv" or p.endswith(MAT))
    if not found:
        raise DatasetError(
            "no labels.csv in the ZIP: put labels.csv (header 'image,<label>,<label>,...', one "
            "row of 0/1 values a photo) at its top with the photos in original/ or beside it, "
            "or use the Kaggle layout (processed/miml data.mat + original/)"
        )
    path = found[0][1]
    if path.endswith(MAT):
        return path[: -len(MAT)], "mat"
    return path[: -len("labels.csv")], "csv"


def _read_labels(zf, files, prefix, kind, folder):
    """(images, labels, label names) from the ZIP's labels file, copied to `folder` to be read; DatasetError."""
    name = prefix + ("labels.csv" if kind == "csv" else MAT)
    target = folder / ("labels.csv" if kind == "csv" else "labels.mat")
    target.write_bytes(zf.read(files[name]))
    try:
        return (_read_csv if kind == "csv" else _read_mat)(target)
    except DataError as e:
        raise DatasetError(str(e).replace(str(target), name)) from None
    finally:
        target.unlink()


def slug(name):
    """A dataset id from an upload's file name: lowercase letters, digits and dashes, and 6 random hex digits."""
    stem = re.sub(r"[^a-z0-9]+", "-", Path(name or "dataset").stem.lower()).strip("-")[:24] or "dataset"
    return f"{stem}-{secrets.token_hex(3)}"


def import_zip(source, out, limits=None, progress=None):
    """Extract the dataset in ZIP `source` (path or file object) into the new folder `out`.

    Returns {"photos", "labels", "skipped": [{"image", "error"}]}; raises DatasetError (nothing left in `out`)."""
    limits = {
        "members": MAX_MEMBERS,
        "member_bytes": MAX_MEMBER_BYTES,
        "total_bytes": MAX_TOTAL_BYTES,
        **(limits or {}),
    }
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError):
        raise DatasetError("the file is not a ZIP archive (or it is damaged)") from None
    with zf:
        files = _check_members(zf, limits)
        prefix, kind = _find_labels(files)
        with atomic_dir(out) as tmp:
            images, labels, label_names = _read_labels(zf, files, prefix, kind, tmp)
            (tmp / "original").mkdir()
            kept, skipped = [], []
            for i, (image, row) in enumerate(zip(images, labels)):
                info = files.get(f"{prefix}original/{image}") or files.get(f"{prefix}{image}")
                if progress and i % 50 == 0:
                    progress(i / len(images))
                if info is None:
                    skipped.append({"image": image, "error": "listed in the labels but not in the ZIP"})
                    continue
                try:
                    data = zf.read(info)
                    load_image(data, CHECK_SIZE)
                except ImageError as e:
                    skipped.append({"image": image, "error": str(e)})
                    continue
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise DatasetError(f"the ZIP member {info.filename!r} is damaged ({e})") from None
                (tmp / "original" / image).write_bytes(data)
                kept.append((image, row))
            if not kept:
                raise DatasetError(
                    "none of the photos listed in the labels could be read: "
                    + "; ".join(f"{s['image']}: {s['error']}" for s in skipped[:5])
                )
            with open(tmp / "labels.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["image", *label_names])
                writer.writerows([image, *map(int, row)] for image, row in kept)
    return {"photos": len(kept), "labels": label_names, "skipped": skipped}
