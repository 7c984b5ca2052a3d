"""The import of a runs folder in the old layout, whose state lived in JSON files, into the store (once).

    datasets/ID/dataset.json + labels.csv + original/   a dataset row, its photos and their labels
    models/ID/                                          a model row
    jobs/ID/status.json                                 a job row (one that was live is failed: nothing beats for it)
    active.json                                         the active model

Idempotent: what is already in the store is left as it is, and the import runs until it has committed its
`imported` setting (a start killed halfway imports the rest next time). After it no JSON file is read; the files
stay where they were (an older version may still be started on a copy).
"""

import hashlib
import json
import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from model.datasets import DatasetError
from workspace.imports import read_labels_csv
from workspace.store import DatasetRecord, LabelStore, Photo

ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
# the keys of an old jobs/ID/status.json that become the job's row (the rest of the row is new)
JOB_KEYS = tuple("dataset mode epochs state progress message eta_s model created seconds photos".split())


def read_json(path):
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def mtime(path):
    return datetime.fromtimestamp(Path(path).stat().st_mtime, timezone.utc).isoformat(timespec="seconds")


def import_dataset(store: LabelStore, folder: Path) -> bool:
    """Add the old-layout dataset in `folder` (dataset.json, labels.csv, original/) -> whether it was one.
    DatasetError when its labels.csv cannot be read."""
    info = read_json(folder / "dataset.json")
    if info is None or not (folder / "labels.csv").is_file() or not ID.fullmatch(folder.name):
        return False
    names, rows = read_labels_csv(folder / "labels.csv")
    photos = [Photo(image, sha256(folder / "original" / image)) for image, _ in rows]
    created = info.get("created") if isinstance(info.get("created"), str) else mtime(folder / "dataset.json")
    name = info.get("name") if isinstance(info.get("name"), str) else folder.name
    try:
        store.add_dataset(
            DatasetRecord(folder.name, name, names, folder, created),
            photos,
            {image: labels for image, labels in rows if labels is not None},
        )
    except sqlite3.IntegrityError:  # another process imported it first
        pass
    return True


def sha256(path):
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def import_runs_folder(root: Path, store: LabelStore) -> None:
    """Import what the runs folder `root` holds in the old layout into `store`, unless that was done."""
    if imported(store):
        return
    for folder in sorted((root / "datasets").iterdir()):
        if folder.is_dir() and not store.has_dataset(folder.name):
            try:
                import_dataset(store, folder)
            except DatasetError:  # an unreadable labels.csv: the folder stays, unlisted, as before
                pass
    models = [
        (p.name, mtime(p / "model.keras"))
        for p in sorted((root / "models").iterdir())
        if ID.fullmatch(p.name) and (p / "model.keras").is_file()
    ]
    jobs = [job_row(p.name, read_json(p / "status.json")) for p in sorted((root / "jobs").iterdir())]
    active = (read_json(root / "active.json") or {}).get("model")
    with store.write() as con:
        if con.execute("SELECT 1 FROM settings WHERE key = 'imported'").fetchone():
            return  # another process was first
        con.executemany("INSERT OR IGNORE INTO models (id, created) VALUES (?, ?)", models)
        con.executemany(
            "INSERT OR IGNORE INTO jobs (id, dataset, mode, epochs, state, progress, message, eta_s, model, created, "
            "seconds, photos, curve, owner, heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'imported', 0)",
            [j for j in jobs if j],
        )
        if isinstance(active, str) and active in {m[0] for m in models}:
            con.execute("UPDATE settings SET value = ? WHERE key = 'active_model'", (active,))
        con.execute("INSERT INTO settings VALUES ('imported', ?)", (datetime.now(timezone.utc).isoformat(),))


def imported(store: LabelStore) -> bool:
    with store.read() as con:
        return con.execute("SELECT 1 FROM settings WHERE key = 'imported'").fetchone() is not None


def job_row(job_id, status):
    """A jobs row from an old status.json; None for one that is not a job's."""
    if status is None or not ID.fullmatch(job_id) or not all(isinstance(status.get(k), str) for k in ("mode", "state")):
        return None
    values = {k: status.get(k) for k in JOB_KEYS}
    if values["state"] in ("queued", "running"):  # its process belonged to the old version: nothing beats for it
        values.update(
            state="failed", eta_s=None, message="the training process ended unexpectedly (the server restarted)"
        )
    values["dataset"] = values["dataset"] if isinstance(values["dataset"], str) else ""
    values["created"] = values["created"] if isinstance(values["created"], str) else ""
    values["progress"] = values["progress"] if isinstance(values["progress"], (int, float)) else 0.0
    values["message"] = values["message"] if isinstance(values["message"], str) else ""
    curve = status.get("curve") if isinstance(status.get("curve"), list) else []
    return (job_id, *values.values(), json.dumps(curve))
