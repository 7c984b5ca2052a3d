"""The labels store: one SQLite database (stdlib sqlite3, WAL) in the runs folder, RUNS/workspace.sqlite.

    datasets   one row a dataset: its label names (in order), its folder of photos, when it was made
    photos     one row a photo of a dataset: file name, content hash, position (labels.csv's order)
    decisions  the history: every decision ever made, never changed (labels as a JSON list; NULL = unlabelled
               again, an undo), with its time and where it came from (import, labeller, ...)
    labels     the current labels of each labelled photo: the last decision per photo (last write wins)

Each decision is one transaction (BEGIN IMMEDIATE ... COMMIT), so a kill -9 at any moment loses at most the
decision in flight. Every connection waits for a busy database (busy_timeout) instead of failing, so several
threads and processes may write at once. The schema's version is `PRAGMA user_version`; MIGRATIONS[v] brings a
database at version v to v + 1. The same database holds the rest of the runs folder's state (workspace.registry):

    models     one row a trained model (its directory stays in RUNS/models/ID)
    jobs       one row a training job: state, progress, curve, who started it, its process and its heartbeat
    settings   key/value: the active model and `version`, bumped by every switch and every model deletion
"""

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from workspace.database import SQLiteDatabase

MIGRATIONS = [
    """
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        labels TEXT NOT NULL,          -- JSON list of the label names, in order
        folder TEXT NOT NULL,          -- holds original/ (the photos) and the labels.csv written from here
        created TEXT NOT NULL
    );
    CREATE TABLE photos (
        dataset TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        image TEXT NOT NULL,           -- file name inside original/
        sha256 TEXT NOT NULL,          -- content hash: the embedding cache's key
        position INTEGER NOT NULL,
        PRIMARY KEY (dataset, image)
    );
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        dataset TEXT NOT NULL,
        image TEXT NOT NULL,
        labels TEXT,                   -- JSON list of the labels the photo has, NULL: not labelled (an undo)
        at TEXT NOT NULL,              -- UTC, ISO 8601 with microseconds
        source TEXT NOT NULL,          -- 'import', 'labeller', ...
        FOREIGN KEY (dataset, image) REFERENCES photos(dataset, image) ON DELETE CASCADE
    );
    CREATE INDEX decisions_by_photo ON decisions(dataset, image, id);
    CREATE TABLE labels (
        dataset TEXT NOT NULL,
        image TEXT NOT NULL,
        labels TEXT NOT NULL,
        decision INTEGER NOT NULL REFERENCES decisions(id),
        PRIMARY KEY (dataset, image),
        FOREIGN KEY (dataset, image) REFERENCES photos(dataset, image) ON DELETE CASCADE
    );
    """,
    # 2: the runs folder's state (workspace.registry); a JSON file in the runs folder is no longer read after the
    # import of the old layout (workspace.legacy). One live job at a time, across every process: the partial unique
    # index lets only one row be queued or running.
    """
    CREATE TABLE models (
        id TEXT PRIMARY KEY,
        created TEXT NOT NULL,
        job TEXT                       -- the job that trained it (NULL: imported or copied in)
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        dataset TEXT NOT NULL,
        mode TEXT NOT NULL,
        epochs INTEGER,
        state TEXT NOT NULL,           -- queued, running, done, failed, cancelled
        progress REAL NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        eta_s INTEGER,
        model TEXT,
        curve TEXT NOT NULL DEFAULT '[]',  -- JSON list of {"epoch", "loss", "val_loss"}
        created TEXT NOT NULL,
        owner TEXT NOT NULL,           -- host:pid of the app process that started it
        host TEXT,                     -- where the job's process runs, and its pid (its process group)
        pid INTEGER,
        heartbeat REAL NOT NULL,       -- unix time of the job process's last sign of life
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        seconds REAL,
        photos INTEGER,
        runner TEXT NOT NULL DEFAULT 'local'  -- 'local' or 'ray'
    );
    CREATE UNIQUE INDEX one_live_job ON jobs((0)) WHERE state IN ('queued', 'running');
    CREATE INDEX jobs_by_mode ON jobs(mode, state, created);
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value
    );
    INSERT INTO settings VALUES ('active_model', 'shipped'), ('version', 0)
    """,
    # the next migration goes here
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """A request the store refuses (unknown dataset or photo, a label not in the dataset)."""

    status = 400

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status or self.status


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    name: str
    labels: list
    folder: Path
    created: str


@dataclass(frozen=True)
class Photo:
    image: str
    sha256: str


@dataclass(frozen=True)
class Decision:
    id: int
    image: str
    labels: list | None  # None: made unlabelled again
    at: str
    source: str


def now():
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Database(SQLiteDatabase):
    """The database at `path` with this module's MIGRATIONS, created or migrated on first use (workspace.database:
    WAL, busy_timeout, one BEGIN IMMEDIATE transaction a write). Safe to share between threads and processes:
    every call opens its own short-lived connection (`read`, `write`)."""

    migrations = MIGRATIONS
    error = StoreError


class LabelStore(Database):
    """The labels (datasets, photos, decisions) of the database at `path`."""

    # --- datasets ----------------------------------------------------------------------------------
    def add_dataset(self, record, photos, labelled):
        """A new dataset with its photos ([Photo]) and its known labels ({image: [labels]}), in one transaction."""
        at = now()
        with self.write() as con:
            con.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?)",
                (record.id, record.name, json.dumps(record.labels), str(record.folder), record.created),
            )
            con.executemany(
                "INSERT INTO photos VALUES (?, ?, ?, ?)",
                [(record.id, p.image, p.sha256, i) for i, p in enumerate(photos)],
            )
            for image, labels in labelled.items():
                self._decide(con, record.id, image, labels, at, "import")

    def dataset(self, dataset_id):
        with self._connect() as con:
            row = con.execute("SELECT * FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
        if row is None:
            raise StoreError(f"no dataset {dataset_id!r} in the labeller", 404)
        return DatasetRecord(row[0], row[1], json.loads(row[2]), Path(row[3]), row[4])

    def datasets(self):
        """[(DatasetRecord, number of photos)], the newest first."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT d.*, (SELECT COUNT(*) FROM photos p WHERE p.dataset = d.id) FROM datasets d "
                "ORDER BY created DESC, id"
            ).fetchall()
        return [(DatasetRecord(r[0], r[1], json.loads(r[2]), Path(r[3]), r[4]), r[5]) for r in rows]

    def has_dataset(self, dataset_id):
        with self._connect() as con:
            return con.execute("SELECT 1 FROM datasets WHERE id = ?", (dataset_id,)).fetchone() is not None

    def photos(self, dataset_id):
        """[Photo] in the dataset's order."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT image, sha256 FROM photos WHERE dataset = ? ORDER BY position", (dataset_id,)
            ).fetchall()
        return [Photo(*r) for r in rows]

    # --- decisions ---------------------------------------------------------------------------------
    def set_labels(self, dataset_id, image, labels, source="labeller"):
        """Record one decision: `labels` (a list, possibly empty) is the photo's full set; None makes it unlabelled.
        One transaction; the last decision per photo wins. Returns the Decision."""
        record = self.dataset(dataset_id)
        if labels is not None:
            unknown = [l for l in labels if l not in record.labels]
            if unknown:
                raise StoreError(f"unknown label {unknown[0]!r}: this dataset's labels are {', '.join(record.labels)}")
            labels = [l for l in record.labels if l in set(labels)]  # the dataset's order, no repeats
        with self.write() as con:
            at = now()  # under the write lock: times follow the order of the decisions
            if (
                con.execute("SELECT 1 FROM photos WHERE dataset = ? AND image = ?", (dataset_id, image)).fetchone()
                is None
            ):
                raise StoreError(f"no photo {image!r} in dataset {dataset_id!r}", 404)
            decision_id = self._decide(con, dataset_id, image, labels, at, source)
        return Decision(decision_id, image, labels, at, source)

    @staticmethod
    def _decide(con, dataset_id, image, labels, at, source):
        value = None if labels is None else json.dumps(labels)
        decision_id = con.execute(
            "INSERT INTO decisions (dataset, image, labels, at, source) VALUES (?, ?, ?, ?, ?)",
            (dataset_id, image, value, at, source),
        ).lastrowid
        if labels is None:
            con.execute("DELETE FROM labels WHERE dataset = ? AND image = ?", (dataset_id, image))
        else:
            con.execute(
                "INSERT INTO labels VALUES (?, ?, ?, ?) ON CONFLICT (dataset, image) "
                "DO UPDATE SET labels = excluded.labels, decision = excluded.decision",
                (dataset_id, image, value, decision_id),
            )
        return decision_id

    def labelled(self, dataset_id):
        """{image: [labels]} of every labelled photo."""
        with self._connect() as con:
            rows = con.execute("SELECT image, labels FROM labels WHERE dataset = ?", (dataset_id,)).fetchall()
        return {image: json.loads(labels) for image, labels in rows}

    def history(self, dataset_id, image=None):
        """[Decision], oldest first: the dataset's, or one photo's."""
        query, args = "SELECT id, image, labels, at, source FROM decisions WHERE dataset = ?", [dataset_id]
        if image is not None:
            query, args = query + " AND image = ?", [*args, image]
        with self._connect() as con:
            rows = con.execute(query + " ORDER BY id", args).fetchall()
        return [Decision(i, im, None if l is None else json.loads(l), at, s) for i, im, l, at, s in rows]

    def last_decision(self, dataset_id):
        """The id of the dataset's latest decision (0 without any): a cheap way to see that labels changed."""
        with self._connect() as con:
            row = con.execute("SELECT MAX(id) FROM decisions WHERE dataset = ?", (dataset_id,)).fetchone()
        return row[0] or 0
