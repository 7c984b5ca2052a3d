"""Corrected labels collected from users, stored as a dataset folder that `model.train --data` reads:
`DIR/original/<sha256 prefix>.<ext>` and `DIR/labels.csv` (`image,<label>,...`, 0/1), both written atomically.

One folder holds one set of labels, fixed by its first row: feedback given while a model with other labels
is in use is refused (FeedbackLabelsError), never written under the wrong header."""

import csv
import hashlib
import io
import threading
from pathlib import Path

from PIL import Image

from model.modeldir import write_atomically
from model.preprocess import decode

EXTENSIONS = {"JPEG": "jpg", "TIFF": "tif", "HEIF": "heic"}  # other formats: the format's name in lower case
MAX_STORED_BYTES = 2 << 20  # a larger photo is stored re-encoded: JPEG, at most STORED_SIDE pixels a side
STORED_SIDE = 1024  # four times the model's input: training sees the same photo


class FeedbackError(Exception):
    """The feedback folder cannot be used; the message names the file."""


class FeedbackLabelsError(FeedbackError):
    """The feedback folder holds another set of labels than the model in use."""


def bounded(data):
    """The photo's bytes as sent, or re-encoded (JPEG, upright, at most STORED_SIDE a side) when over
    MAX_STORED_BYTES: what is stored for one correction stays small whatever was uploaded."""
    if len(data) <= MAX_STORED_BYTES:
        return data
    im = decode(data, STORED_SIDE)  # a large JPEG is decoded at a reduced size
    im.thumbnail((STORED_SIDE, STORED_SIDE))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=92)
    return out.getvalue()


class Feedback:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.csv = self.folder / "labels.csv"
        self._lock = threading.Lock()  # one read-modify-write of labels.csv at a time
        try:
            (self.folder / "original").mkdir(parents=True, exist_ok=True)
            rows = self._rows()
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise FeedbackError(f"{self.folder}: cannot use it for feedback ({e})") from None
        if rows and (len(rows[0]) < 2 or rows[0][0] != "image"):
            raise FeedbackError(f"{self.csv}: its header is {','.join(rows[0])!r}, not 'image,<label>,...'")
        self.labels = rows[0][1:] if rows else None  # None: no feedback yet, any set of labels may start it

    def _rows(self):
        if not self.csv.exists():
            return []
        with open(self.csv, newline="") as f:
            return list(csv.reader(f))

    def check_labels(self, label_set):
        """FeedbackLabelsError unless feedback for a model with labels `label_set` belongs in this folder."""
        if self.labels is not None and self.labels != list(label_set):
            raise FeedbackLabelsError(
                f"the feedback folder collects the labels {', '.join(self.labels)}, and the model in use has "
                f"{', '.join(label_set)}: switch back to a model with those labels, or start the app with "
                "another --feedback folder"
            )

    def save(self, data, labels, label_set):
        """Store the photo `data` with its true `labels` out of `label_set` (the model's labels);
        -> (file name, True if it is new, False if updated)."""
        digest = hashlib.sha256(data).hexdigest()[:16]  # of what was sent: the same photo sent again is one row
        data = bounded(data)
        kind = Image.open(io.BytesIO(data)).format
        name = f"{digest}.{EXTENSIONS.get(kind, kind.lower())}"
        row = [name, *("1" if l in labels else "0" for l in label_set)]
        with self._lock:
            self.check_labels(label_set)
            path = self.folder / "original" / name
            if not path.exists():
                write_atomically(path, data)
            rows = [r for r in self._rows()[1:] if r]
            created = all(r[0] != name for r in rows)
            rows = [row if r[0] == name else r for r in rows] + ([row] if created else [])
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows([["image", *label_set], *rows])
            write_atomically(self.csv, out.getvalue().encode())
            self.labels = list(label_set)
        return name, created
