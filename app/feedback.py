"""Corrected labels collected from users, stored as a dataset folder that `model.train --data` reads:
`DIR/original/<sha256 prefix>.<ext>` and `DIR/labels.csv` (`image,<label>,...`, 0/1), both written atomically."""

import csv
import hashlib
import io
import os
import threading
from pathlib import Path

from PIL import Image

EXTENSIONS = {"JPEG": "jpg", "TIFF": "tif", "HEIF": "heic"}  # other formats: the format's name in lower case


class FeedbackError(Exception):
    """The feedback folder cannot be used; the message names the file."""


def write_atomically(path, data):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Feedback:
    def __init__(self, folder, labels):
        self.folder = Path(folder)
        self.labels = list(labels)
        self.csv = self.folder / "labels.csv"
        self._lock = threading.Lock()  # one read-modify-write of labels.csv at a time
        try:
            (self.folder / "original").mkdir(parents=True, exist_ok=True)
            rows = self._rows()
        except (OSError, UnicodeDecodeError) as e:
            raise FeedbackError(f"{self.folder}: cannot use it for feedback ({e})") from None
        if rows and rows[0] != ["image", *self.labels]:
            raise FeedbackError(
                f"{self.csv}: its header is {','.join(rows[0])!r}, not the model's 'image,{','.join(self.labels)}'"
            )

    def _rows(self):
        if not self.csv.exists():
            return []
        with open(self.csv, newline="") as f:
            return list(csv.reader(f))

    def save(self, data, labels):
        """Store the photo `data` with its true `labels`; -> (file name, True if it is new, False if updated)."""
        kind = Image.open(io.BytesIO(data)).format
        name = f"{hashlib.sha256(data).hexdigest()[:16]}.{EXTENSIONS.get(kind, kind.lower())}"
        row = [name, *("1" if l in labels else "0" for l in self.labels)]
        with self._lock:
            path = self.folder / "original" / name
            if not path.exists():
                write_atomically(path, data)
            rows = [r for r in self._rows()[1:] if r]
            created = all(r[0] != name for r in rows)
            rows = [row if r[0] == name else r for r in rows] + ([row] if created else [])
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows([["image", *self.labels], *rows])
            write_atomically(self.csv, out.getvalue().encode())
        return name, created
