"""Corrected labels collected from users (POST /api/feedback) in the --feedback folder DIR, which stays a dataset
folder of its own that `model.train --data DIR` reads:

    DIR/feedback.sqlite   the truth: the folder's label set and one row a photo (workspace.database's rules:
                          WAL, busy_timeout, one BEGIN IMMEDIATE transaction a save), so that several app
                          processes may share one folder
    DIR/original/         the photos, <sha256 prefix>.<ext>, each written atomically before its row
    DIR/labels.csv        `image,<label>,...` (0/1, in the order the photos were first sent), rewritten
                          atomically from the database inside every save's transaction

A kill -9 at any moment loses at most the save in flight: its photo may be on disk without a row (never a row
without its photo), and a labels.csv written just before the kill is written again from the database on the
next open. A folder from before the database (labels.csv and original/ only) is imported on first open.

One folder holds one set of labels, fixed by its first row: feedback given while a model with other labels
is in use is refused (FeedbackLabelsError), never written under the wrong header."""

import csv
import hashlib
import io
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from model.modeldir import write_atomically
from model.preprocess import decode
from workspace.database import SQLiteDatabase
from workspace.imports import labels_csv_text
from workspace.store import now

DATABASE = "feedback.sqlite"
EXTENSIONS = {"JPEG": "jpg", "TIFF": "tif", "HEIF": "heic"}  # other formats: the format's name in lower case
MAX_STORED_BYTES = 2 << 20  # a larger photo is stored re-encoded: JPEG, at most STORED_SIDE pixels a side
STORED_SIDE = 1024  # four times the model's input: training sees the same photo

MIGRATIONS = [
    """
    CREATE TABLE label_set (
        id INTEGER PRIMARY KEY CHECK (id = 1),  -- one row: the folder's labels, fixed by its first feedback
        labels TEXT NOT NULL                    -- JSON list of the label names, in order
    );
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,   -- labels.csv's order: when the photo was first sent
        image TEXT NOT NULL UNIQUE,             -- file name inside original/
        labels TEXT NOT NULL,                   -- JSON list of the labels the photo has (the label set's order)
        created TEXT NOT NULL,                  -- UTC, ISO 8601
        updated TEXT NOT NULL
    );
    """,
]


class FeedbackError(Exception):
    """The feedback folder cannot be used; the message names the file."""


class FeedbackLabelsError(FeedbackError):
    """The feedback folder holds another set of labels than the model in use."""


@dataclass(frozen=True)
class FeedbackRow:
    image: str
    labels: list
    created: str
    updated: str


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


class Feedback(SQLiteDatabase):
    """The feedback folder `folder` (created when missing). Safe to share between threads and processes."""

    migrations = MIGRATIONS
    error = FeedbackError

    def __init__(self, folder):
        self.folder = Path(folder)
        self.csv = self.folder / "labels.csv"
        try:
            (self.folder / "original").mkdir(parents=True, exist_ok=True)
            super().__init__(self.folder / DATABASE)
            with self.write() as con:
                if _label_set(con) is None and self.csv.exists():
                    self._import(con)
                self._write_csv(con)
        except sqlite3.DatabaseError as e:
            raise FeedbackError(f"{self.folder / DATABASE}: cannot use it for feedback ({e})") from None
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise FeedbackError(f"{self.folder}: cannot use it for feedback ({e})") from None

    def _import(self, con):
        """labels.csv of a folder from before the database: its header is the label set, its rows the feedback."""
        with open(self.csv, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        if not rows:
            return
        header, at = rows[0], now()
        if len(header) < 2 or header[0] != "image":
            raise FeedbackError(f"{self.csv}: its header is {','.join(header)!r}, not 'image,<label>,...'")
        names = header[1:]
        con.execute("INSERT INTO label_set VALUES (1, ?)", (json.dumps(names),))
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != len(header) or any(v not in ("0", "1") for v in row[1:]):
                raise FeedbackError(f"{self.csv}: line {line} is not 'image' and {len(names)} values of 0 or 1")
            labels = [n for n, v in zip(names, row[1:]) if v == "1"]
            con.execute(
                "INSERT INTO feedback (image, labels, created, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (image) DO UPDATE SET labels = excluded.labels",
                (row[0], json.dumps(labels), at, at),
            )

    def _write_csv(self, con):
        """labels.csv from the database, inside the caller's transaction: written in the order of the commits."""
        names = _label_set(con)
        if names is None:
            return
        rows = con.execute("SELECT image, labels FROM feedback ORDER BY id")
        text = labels_csv_text(names, [(image, set(json.loads(labels))) for image, labels in rows]).encode()
        if not self.csv.exists() or self.csv.read_bytes() != text:
            write_atomically(self.csv, text)

    @property
    def labels(self):
        """The folder's label set; None before its first feedback (any set of labels may start it)."""
        with self.read() as con:
            return _label_set(con)

    def check_labels(self, label_set):
        """FeedbackLabelsError unless feedback for a model with labels `label_set` belongs in this folder."""
        with self.read() as con:
            self._check(con, label_set)

    @staticmethod
    def _check(con, label_set):
        names = _label_set(con)
        if names is not None and names != list(label_set):
            raise FeedbackLabelsError(
                f"the feedback folder collects the labels {', '.join(names)}, and the model in use has "
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
        self.check_labels(label_set)  # before the photo is written
        path = self.folder / "original" / name
        if not path.exists():
            write_atomically(path, data)  # the photo first: a row never names a photo that is not there
        chosen = json.dumps([l for l in label_set if l in labels])
        with self.write() as con:
            self._check(con, label_set)  # again under the write lock: another process may have started the folder
            con.execute("INSERT OR IGNORE INTO label_set VALUES (1, ?)", (json.dumps(list(label_set)),))
            created = con.execute("SELECT 1 FROM feedback WHERE image = ?", (name,)).fetchone() is None
            at = now()
            con.execute(
                "INSERT INTO feedback (image, labels, created, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (image) DO UPDATE SET labels = excluded.labels, updated = excluded.updated",
                (name, chosen, at, at),
            )
            self._write_csv(con)
        return name, created

    def rows(self):
        """[FeedbackRow] in labels.csv's order."""
        with self.read() as con:
            found = con.execute("SELECT image, labels, created, updated FROM feedback ORDER BY id").fetchall()
        return [FeedbackRow(image, json.loads(labels), created, updated) for image, labels, created, updated in found]


def _label_set(con):
    row = con.execute("SELECT labels FROM label_set").fetchone()
    return None if row is None else json.loads(row[0])
