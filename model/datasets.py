"""The guarded steps of every dataset import from a ZIP (workspace.imports puts them together, for each layout).

Every member name is checked before anything is written (none may lead outside the dataset's folder), the
number of members and their stated sizes are limited (zipfile never inflates a member past its stated size;
`import_limits` builds the limits, the runs folder's quota among them), the labels file is read with bounded
memory (model.data's readers), and every photo is decoded once: photos that cannot be read are left out and
listed by name (`skipped_summary`: the first MAX_SKIPPED, and their count).

Limits: the labels file (labels.csv at most model.data.MAX_CSV_BYTES, the .mat at most MAX_MAT_BYTES), a
photo at most MAX_PHOTO_BYTES, the photos' decoded pixels in all at most MAX_ZIP_PIXELS, and what the ZIP
inflates to within the runs folder's quota (`limits["quota_bytes"]`, DiskQuotaError past it). Encrypted
members, compression methods zipfile cannot read, repeated member names, two labels files and damaged
members are refused.
"""

import re
import secrets
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from model.data import MAX_CSV_BYTES, MAX_MAT_BYTES, DataError, _read_csv, _read_mat
from model.preprocess import ImageError, decoded_pixels, load_image

MAX_MEMBERS = 20_000
MAX_MEMBER_BYTES = 64 << 20  # one member, uncompressed
MAX_TOTAL_BYTES = 1 << 30  # all members, uncompressed
MAX_PHOTO_BYTES = 16 << 20  # one photo: larger ones are left out (a 12 MP phone JPEG is about 4 MB)
MAX_ZIP_PIXELS = 1_000_000_000  # decoded pixels of all the photos (a large JPEG counts at its reduced size)
MAX_SKIPPED = 100  # photos left out that are listed by name (all are counted)
DEFAULT_QUOTA_BYTES = 10 << 30  # the runs folder's (--max-runs-gb)
METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
CHECK_SIZE = 224  # photos are decoded (and letterboxed) once at the model's input size to check them
MAT = "processed/miml data.mat"


class DatasetError(ValueError):
    """The upload is not a dataset we can use; the message says what is wrong, for a person."""


class DiskQuotaError(DatasetError):
    """The dataset would not fit in what is left of the runs folder's quota."""


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
        if info.flag_bits & 0x1:
            raise DatasetError(f"the ZIP member {info.filename!r} is encrypted; send a ZIP without a password")
        if info.compress_type not in METHODS:
            raise DatasetError(
                f"the ZIP member {info.filename!r} uses compression method {info.compress_type}, which cannot be "
                "read; use the usual one (deflate)"
            )
        if "/".join(parts) in files:
            raise DatasetError(f"the ZIP holds {info.filename!r} twice; which one is meant is unclear")
        if info.file_size > limits["member_bytes"]:
            raise DatasetError(
                f"the ZIP member {info.filename!r} inflates to {info.file_size:,} bytes, over the "
                f"{limits['member_bytes']:,}-byte limit for one file"
            )
        total += info.file_size
        files["/".join(parts)] = info
    if total > limits["total_bytes"]:
        raise DatasetError(f"the ZIP inflates to {total:,} bytes, over the {limits['total_bytes']:,}-byte limit")
    if total > limits["quota_bytes"]:
        raise DiskQuotaError(
            f"the ZIP inflates to {total:,} bytes, but the runs folder has {max(0, limits['quota_bytes']):,} "
            "bytes left of its quota: delete datasets or models you no longer need"
        )
    return files


def find_labels(files):
    """(folder prefix, 'csv' or 'mat') of the shallowest labels.csv or Kaggle .mat file; None without one.
    Two labels files at that depth are refused (which one is meant is unclear)."""
    found = sorted((p.count("/"), p) for p in files if p.split("/")[-1] == "labels.csv" or p.endswith(MAT))
    if not found:
        return None
    if len(found) > 1 and found[1][0] == found[0][0]:
        raise DatasetError(f"the ZIP holds two labels files ({found[0][1]!r} and {found[1][1]!r}); keep one")
    path = found[0][1]
    if path.endswith(MAT):
        return path[: -len(MAT)], "mat"
    return path[: -len("labels.csv")], "csv"


def read_labels(zf, files, prefix, kind, folder, unlabelled=False):
    """(images, labels, label names) from the ZIP's labels file (model.data's bounded readers: its size, rows, fields
    and shapes are checked before they are kept), copied to `folder` to be read; DatasetError. `unlabelled`: see
    model.data._read_csv (empty cells in labels.csv: not labelled yet)."""
    name = prefix + ("labels.csv" if kind == "csv" else MAT)
    target = folder / ("labels.csv" if kind == "csv" else "labels.mat")
    limit = MAX_CSV_BYTES if kind == "csv" else MAX_MAT_BYTES
    if files[name].file_size > limit:
        raise DatasetError(f"{name} inflates to {files[name].file_size:,} bytes, over its {limit:,}-byte limit")
    target.write_bytes(_read_member(zf, files[name]))
    try:
        return _read_csv(target, unlabelled) if kind == "csv" else _read_mat(target)
    except DataError as e:
        raise DatasetError(str(e).replace(str(target), name)) from None
    finally:
        target.unlink()


def _read_member(zf, info):
    """The member's bytes; DatasetError for a damaged one (a bad CRC, a truncated stream)."""
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise DatasetError(f"the ZIP member {info.filename!r} is damaged ({e})") from None


def _check_pixels(zf, infos):
    """DatasetError when the photos' headers declare more than MAX_ZIP_PIXELS decoded pixels in all: checked
    before any photo is decoded (a header is a few bytes of a member; unreadable ones are left out later)."""
    total = 0
    for info in infos:
        try:
            with zf.open(info) as f:
                total += decoded_pixels(f, CHECK_SIZE)
        except (ImageError, zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError):
            continue
        if total > MAX_ZIP_PIXELS:
            raise DatasetError(
                f"the photos decode to over {MAX_ZIP_PIXELS:,} pixels in all, the limit for one ZIP (a large JPEG "
                "counts at its reduced size): send fewer or smaller photos"
            )


def checked_photos(zf, items, skipped):
    """Yield (index, bytes) of each photo in `items` ([(image name, ZipInfo)]) that can be used: first the
    decoded-pixel cap over them all (DatasetError), then each photo over MAX_PHOTO_BYTES or that cannot be
    decoded is left out, appended to `skipped` as {"image", "error"}."""
    _check_pixels(zf, [info for _, info in items])
    for i, (image, info) in enumerate(items):
        if info.file_size > MAX_PHOTO_BYTES:
            skipped.append({"image": image, "error": f"over the {MAX_PHOTO_BYTES:,}-byte limit for a photo"})
            continue
        data = _read_member(zf, info)
        try:
            load_image(data, CHECK_SIZE)
        except ImageError as e:
            skipped.append({"image": image, "error": str(e)})
            continue
        yield i, data


def skipped_summary(skipped):
    """(the first MAX_SKIPPED of `skipped`, how many there are): what an answer lists and counts."""
    return skipped[:MAX_SKIPPED], len(skipped)


def slug(name):
    """A dataset id from an upload's file name: lowercase letters, digits and dashes, and 6 random hex digits."""
    stem = re.sub(r"[^a-z0-9]+", "-", Path(name or "dataset").stem.lower()).strip("-")[:24] or "dataset"
    return f"{stem}-{secrets.token_hex(3)}"


def folder_bytes(folder):
    """Bytes of the files under `folder`."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and not f.is_symlink())


def import_limits(quota_bytes=MAX_TOTAL_BYTES):
    """The limits every import is checked against (_check_members): members, bytes of one member and of all,
    and `quota_bytes`, what is left of the runs folder's quota."""
    return {
        "members": MAX_MEMBERS,
        "member_bytes": MAX_MEMBER_BYTES,
        "total_bytes": MAX_TOTAL_BYTES,
        "quota_bytes": quota_bytes,
    }


def open_zip(source):
    """zipfile.ZipFile of `source` (a path or file object); DatasetError for a file that is not a readable ZIP."""
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError):
        raise DatasetError("the file is not a ZIP archive (or it is damaged)") from None
    except UnicodeDecodeError:
        raise DatasetError("the ZIP has a member name marked UTF-8 that is not valid UTF-8") from None
