"""The runs folder: uploaded datasets, trained models, training jobs and the model the app serves.

    RUNS/workspace.sqlite  the store (workspace.store): datasets and labels, models, jobs, the active model
    RUNS/datasets/ID/      labels.csv + original/ of an upload (uploads come through workspace.Workspace)
    RUNS/models/ID/        model directories (model.modeldir), written by quick or full training
    RUNS/jobs/ID/          log.txt of a full-mode job (what model.train prints for people)
    RUNS/embeddings/       quick mode's embedding cache

Every process on the runs folder sees the same state: the store is the only truth (a runs folder in the old
layout, with JSON files, is imported once: workspace.legacy). One job runs at a time across all processes (the
store's partial unique index on live jobs). A job runs in its own process (workspace.jobs), whose heartbeat any
process checks when it reads the job: one silent for STALE_S is failed and its half-written folders removed.
Every switch of the active model and every model deletion bumps the store's `version`, which each request reads
(`version`) to serve what the store says.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from model.modeldir import SHIPPED_MODEL_DIR, ModelDirError, read_model_dir
from workspace import legacy
from workspace.jobs import LIVE, LIVE_SQL, output_folders, remove_output, run_job
from workspace.store import LabelStore

SHIPPED = "shipped"
DATA = "data"  # the --data dataset
FEEDBACK = "feedback"  # the --feedback folder, once it holds corrected photos
MODES = ("quick", "full")
JOBS = ("local", "ray")  # where full-mode jobs train: this machine, or a Ray cluster (workspace/ray_jobs.py)
BACKBONES = ("shipped", "imagenet")  # quick mode's frozen backbone: the shipped model's (MIML-tuned) or ImageNet's
MAX_EPOCHS = 100
ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")  # matched whole (fullmatch): no trailing newline
LEFTOVERS = ("*.partial-write", "*.training", "*.old")  # what a run killed halfway leaves in models/ or datasets/
STALE_S = 20  # a live job whose heartbeat is older than this is failed (workspace.jobs beats every 2 s)


@dataclass
class JobStatus:
    """A training job as every process sees it: its row of the store's jobs table. GET /api/jobs/ID answers
    to_json(), with "ready" added once it is done."""

    job: str
    dataset: str
    mode: str  # MODES
    epochs: int | None
    state: str  # queued, running (LIVE), done, failed, cancelled
    progress: float  # 0..1
    message: str
    eta_s: int | None  # seconds left, when the job can tell
    model: str | None  # the model's id, once done
    curve: list[dict[str, float]]  # [{"epoch", "loss", "val_loss"}], a point an epoch (full mode)
    created: str  # ISO 8601, UTC
    seconds: float | None  # how long it took, once done
    photos: int | None  # how many photos it trained, validated and tested on, once done
    owner: str  # host:pid of the app process that started it
    runner: str  # JOBS

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


JOB_FIELDS = tuple(f.name for f in fields(JobStatus))
JOB_COLUMNS = "id, dataset, mode, epochs, state, progress, message, eta_s, model, curve, created, seconds, photos, "
JOB_COLUMNS += "owner, runner, host, pid, cancel_requested, heartbeat"


class RegistryError(Exception):
    """A request the registry refuses; `status` is the HTTP status that fits it."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status or self.status


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def checked_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not ID.fullmatch(value):
        shown = repr(value[:70]) if isinstance(value, str) else f"a JSON {type(value).__name__}"
        raise RegistryError(f"{what} must be an id of lowercase letters, digits and dashes, not {shown}", 404)
    return value


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Registry:
    """The runs folder (see the module's docstring): datasets, models, jobs and the active model."""

    def __init__(
        self,
        runs: Path | str,
        data_dir: Path | str | None = None,
        feedback_dir: Path | str | None = None,
        jobs: str = "local",
        ray_address: str | None = None,
    ) -> None:
        """`jobs`: where full-mode jobs train, "local" or "ray" (submitted to the Ray cluster whose dashboard is at
        `ray_address`; None: Ray's default, $RAY_ADDRESS or http://127.0.0.1:8265). Quick mode always runs here."""
        if jobs not in JOBS:
            raise RegistryError(f"jobs must be one of {', '.join(JOBS)}, not {jobs!r}")
        self.root = Path(runs)
        self.jobs, self.ray_address = jobs, ray_address
        self.data_dir = Path(data_dir) if data_dir else None
        # folders given on the command line that are datasets too: id -> (folder, how the list names it)
        self.folders = {
            i: (Path(f), f"{flag} {Path(f).name}")
            for i, f, flag in ((DATA, data_dir, "--data"), (FEEDBACK, feedback_dir, "--feedback"))
            if f
        }
        for sub in ("datasets", "models", "jobs", "embeddings"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.db = LabelStore(self.root / "workspace.sqlite")
        self._local = threading.local()  # each thread's own connection for `version`, kept open
        self._children: dict[str, multiprocessing.process.BaseProcess] = {}  # job id -> the job processes started here
        legacy.import_runs_folder(self.root, self.db)
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Remove the folders that runs killed halfway left behind (OUT.partial-write, OUT.training, OUT.old),
        except those of a job that is still running (in another process, perhaps)."""
        live = self.live_job()
        keep = set(output_folders(self.root / "models" / live.job)) if live else set()
        for sub in ("models", "datasets"):
            for pattern in LEFTOVERS:
                for leftover in (self.root / sub).glob(pattern):
                    if leftover not in keep:
                        shutil.rmtree(leftover, ignore_errors=True)

    # --- datasets ------------------------------------------------------------------------------
    def datasets(self) -> list[dict[str, Any]]:
        """[{"dataset", "name", "photos", "labels", "created"}], --data and --feedback first, then the newest uploads."""
        from model.data import DataError, load_dataset

        out = []
        for dataset_id, (folder, name) in self.folders.items():
            try:
                d = load_dataset(folder)
            except DataError:  # an empty feedback folder, say
                continue
            out.append(
                {"dataset": dataset_id, "name": name, "photos": len(d.images), "labels": d.label_names, "created": None}
            )
        return out + [
            {"dataset": r.id, "name": r.name, "photos": n, "labels": r.labels, "created": r.created}
            for r, n in self.db.datasets()
        ]

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset (not --data or --feedback, nor the one a live job trains on)."""
        if isinstance(dataset_id, str) and dataset_id in self.folders:
            raise RegistryError(f"{self.folders[dataset_id][1]} is not an upload: it is not deleted from here", 403)
        path = self.dataset_path(dataset_id)
        self.reap()
        gone = path.with_name(path.name + ".old")
        with self.db.write() as con:
            live = con.execute(f"SELECT id FROM jobs WHERE {LIVE_SQL} AND dataset = ?", (dataset_id,)).fetchone()
            if live:
                raise RegistryError(f"job {live[0]!r} is training on dataset {dataset_id!r}; cancel it first", 409)
            con.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
            path.rename(gone)  # within the transaction: if it fails, the dataset stays
        shutil.rmtree(gone, ignore_errors=True)

    def dataset_path(self, dataset_id: str) -> Path:
        if isinstance(dataset_id, str) and dataset_id in self.folders:  # a JSON object is no id (404 below)
            return self.folders[dataset_id][0]
        checked_id(dataset_id, "dataset")
        if not self.db.has_dataset(dataset_id):
            raise RegistryError(f"no dataset {dataset_id!r}; upload one first (GET /api/datasets lists them)", 404)
        return self.db.dataset(dataset_id).folder

    # --- models --------------------------------------------------------------------------------
    def _registered(self, model_id: str) -> bool:
        with self.db.read() as con:
            return con.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone() is not None

    def adopt_copied_models(self) -> None:
        """Register the model directories copied into models/ by hand (a job's own is registered when it ends)."""
        with self.db.read() as con:
            known = {r[0] for r in con.execute("SELECT id FROM models UNION SELECT id FROM jobs WHERE " + LIVE_SQL)}
        found = [
            p for p in (self.root / "models").iterdir() if ID.fullmatch(p.name) and p.name not in known and p.is_dir()
        ]
        found = [p for p in found if (p / "model.keras").is_file()]
        if found:
            with self.db.write() as con:
                con.executemany(
                    "INSERT OR IGNORE INTO models (id, created) VALUES (?, ?)",
                    [(p.name, modified(p / "model.keras")) for p in found],
                )

    def model_path(self, model_id: str) -> Path:
        if model_id == SHIPPED:
            return SHIPPED_MODEL_DIR
        path = self.root / "models" / checked_id(model_id, "model")
        if not self._registered(model_id):
            self.adopt_copied_models()
        if not self._registered(model_id) or not (path / "model.keras").is_file():
            raise RegistryError(f"no model {model_id!r} (GET /api/models lists them)", 404)
        return path

    def _describe(self, model_id: str, path: Path) -> dict[str, Any]:
        """What the model list shows of a model; ModelDirError when its files say something of the wrong type."""
        info = read_model_dir(path)
        training = info.card.training
        for key in ("dataset", "created", "architecture", "mode"):
            if not isinstance(getattr(training, key), (str, type(None))):
                raise ModelDirError(f"metrics.json: training.{key} must be text, not {getattr(training, key)!r:.40}")
        for key in ("hamming_loss", "exact_match", "map", "n_images"):
            value = info.card.test.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ModelDirError(f"metrics.json: test.{key} must be a number, not {value!r:.40}")
        # an ensemble (the shipped model) records its members' dataset; a folder elsewhere is named, not its path
        recorded = training.dataset or next((m.dataset for m in training.members or [] if m.dataset), None)
        dataset = Path(recorded) if recorded else None
        dataset_id = None if dataset is None else DATA if self.data_dir and dataset == self.data_dir else dataset.name
        created = training.created or (None if model_id == SHIPPED else modified(path / "model.keras"))
        return {
            "id": model_id,
            "labels": info.labels,
            "architecture": training.architecture,
            "mode": training.mode or "full",
            "created": created,
            "dataset": dataset_id,
            "metrics": {k: info.card.test.get(k) for k in ("hamming_loss", "exact_match", "map", "n_images")},
        }

    def models(self, unreadable: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
        """Every model: the shipped one first, then the trained ones, newest first. A model whose files are
        damaged or malformed is left out; given a list `unreadable`, {"id", "error"} is added to it for each."""
        self.adopt_copied_models()
        with self.db.read() as con:
            ids = [r[0] for r in con.execute("SELECT id FROM models")]
        trained = []
        for model_id in ids:
            path = self.root / "models" / model_id
            try:
                trained.append(self._describe(model_id, path))
            except ModelDirError as e:  # half-written or damaged: not offered, and the reason is shown
                if unreadable is not None:
                    unreadable.append({"id": model_id, "error": str(e).replace(str(path) + "/", "")})
        return [self._describe(SHIPPED, SHIPPED_MODEL_DIR)] + sorted(
            trained, key=lambda m: (m["created"], m["id"]), reverse=True
        )

    def delete_model(self, model_id: str) -> None:
        if model_id == SHIPPED:
            raise RegistryError("the shipped model cannot be deleted", 403)
        path = self.model_path(model_id)
        gone = path.with_name(path.name + ".old")
        with self.db.write() as con:
            if self._setting(con, "active_model") == model_id:
                raise RegistryError(
                    f"model {model_id!r} is the one in use; switch to another model before deleting it", 409
                )
            con.execute("DELETE FROM models WHERE id = ?", (model_id,))
            con.execute("UPDATE settings SET value = value + 1 WHERE key = 'version'")
            path.rename(gone)  # within the transaction: if it fails, the model stays
        shutil.rmtree(gone, ignore_errors=True)

    @staticmethod
    def _setting(con, key: str) -> Any:
        return con.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()[0]

    def active(self) -> str:
        """The id of the model the pages use (the shipped one unless switched); a deleted or damaged choice
        falls back to the shipped one."""
        with self.db.read() as con:
            chosen = self._setting(con, "active_model")
        try:
            self.check_model(chosen)
            return chosen
        except RegistryError:
            return SHIPPED

    def _reader(self):
        """This thread's own connection for reads, kept open (each statement sees the latest commit)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self.db.connection()
        return con

    def version(self) -> int:
        """The store's version: it changes with every switch of the active model and every model deletion. One
        read on this thread's open connection (benchmarks/store.py measures it)."""
        return self._reader().execute("SELECT value FROM settings WHERE key = 'version'").fetchone()[0]

    def check_model(self, model_id: str) -> Path:
        """The model's directory, after reading and checking its files; RegistryError (404 or 409) if it cannot serve."""
        path = self.model_path(model_id)
        try:
            read_model_dir(path)
        except ModelDirError as e:
            raise RegistryError(
                f"model {model_id!r} cannot be used: {str(e).replace(str(path) + '/', '')}", 409
            ) from None
        return path

    def set_active(self, model_id: str) -> None:
        """Make `model_id` the one every process serves, once its files have been checked."""
        self.check_model(model_id)
        with self.db.write() as con:
            if model_id != SHIPPED and not con.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone():
                raise RegistryError(f"no model {model_id!r} (GET /api/models lists them)", 404)
            con.execute("UPDATE settings SET value = ? WHERE key = 'active_model'", (model_id,))
            con.execute("UPDATE settings SET value = value + 1 WHERE key = 'version'")

    def model_ids(self) -> set[str]:
        """The ids of every model there is (the shipped one included)."""
        with self.db.read() as con:
            return {SHIPPED, *(r[0] for r in con.execute("SELECT id FROM models"))}

    # --- jobs ----------------------------------------------------------------------------------
    def start_job(
        self,
        dataset_id: str,
        mode: str,
        epochs: int | None = None,
        backbone: str | None = None,
        train_args: Iterable[str] = (),
    ) -> str:
        """Start training on a dataset in a separate process -> the job id (also the model's id).

        `backbone` (quick mode): "shipped" (default) or "imagenet"; `train_args`: extra `model.train`
        arguments for full mode (tests keep a run tiny with them)."""
        if mode not in MODES:
            raise RegistryError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if backbone is not None and (mode != "quick" or backbone not in BACKBONES):
            raise RegistryError(f"backbone is for quick mode: one of {', '.join(BACKBONES)}, not {backbone!r}")
        if epochs is not None and (
            isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS
        ):
            raise RegistryError(f"epochs must be a whole number from 1 to {MAX_EPOCHS}, not {epochs!r}")
        if mode == "quick" and epochs is not None:
            raise RegistryError("quick mode has no epochs (it fits a logistic head); leave epochs out")
        data = self.dataset_path(dataset_id)
        self.reap()
        multiprocessing.active_children()  # reaps the job processes of this one that have ended
        job_id = f"{mode}-{datetime.now():%Y%m%d-%H%M%S}-{os.urandom(2).hex()}"
        runner = self.jobs if mode == "full" else "local"
        with self.db.write() as con:
            live = con.execute(f"SELECT id FROM jobs WHERE {LIVE_SQL}").fetchone()
            if live:
                raise RegistryError(
                    f"job {live[0]!r} is still running; one job runs at a time (wait for it or cancel it)", 409
                )
            con.execute(
                "INSERT INTO jobs (id, dataset, mode, epochs, state, message, created, owner, heartbeat, runner) "
                "VALUES (?, ?, ?, ?, 'queued', 'starting', ?, ?, ?, ?)",
                (job_id, dataset_id, mode, epochs, now(), this_process(), time.time(), runner),
            )
        folder = self.root / "jobs" / job_id
        folder.mkdir()
        spec = {
            "job": job_id,
            "db": str(self.db.path),
            "folder": str(folder),
            "data": str(data),
            "mode": mode,
            "epochs": epochs,
            "out": str(self.root / "models" / job_id),
            "cache": str(self.root / "embeddings"),
            "backbone": backbone or "shipped",
            "train_args": list(train_args),
            "jobs": runner,
            "ray_address": self.ray_address,
        }
        process = multiprocessing.get_context("spawn").Process(target=run_job, args=(spec,), daemon=True)
        try:
            process.start()
        except Exception as e:
            self._end(job_id, "failed", f"the training process could not start: {e}")
            raise
        self._children[job_id] = process
        return job_id

    def timing(self, mode: str) -> dict[str, Any] | None:
        """{"seconds", "photos", "created"} of the newest finished job of `mode`, or None before the first."""
        with self.db.read() as con:
            row = con.execute(
                "SELECT seconds, photos, created FROM jobs WHERE mode = ? AND state = 'done' AND seconds "
                "ORDER BY created DESC LIMIT 1",
                (mode,),
            ).fetchone()
        return row and dict(zip(("seconds", "photos", "created"), row))

    def live_job(self) -> JobStatus | None:
        """The status of the job that is queued or running (started by any process), else None."""
        self.reap()
        with self.db.read() as con:
            row = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {LIVE_SQL}").fetchone()
        return row and self._status(row)

    def job(self, job_id: str) -> JobStatus:
        """The job's status; one whose process has gone without saying so is reported failed."""
        checked_id(job_id, "job")
        query = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
        row = self._reader().execute(query, (job_id,)).fetchone()
        if row is None:
            raise RegistryError(f"no job {job_id!r}", 404)
        if row[4] in LIVE and self._check_alive(row):
            row = self._reader().execute(query, (job_id,)).fetchone()
        return self._status(row)

    @staticmethod
    def _status(row) -> JobStatus:
        status = dict(zip(JOB_FIELDS, row))
        return JobStatus(**{**status, "curve": json.loads(status["curve"])})

    def _check_alive(self, row) -> bool:
        """Fail a live job whose process has gone (a child of this process that has ended, or a heartbeat older
        than STALE_S) -> whether it was failed."""
        job_id, cancelled, heartbeat = row[0], row[-2], row[-1]
        child = self._children.get(job_id)
        if child is not None and not child.is_alive():
            if cancelled:  # killed by a cancel from another process of this machine, which is marking it so
                return self._end(job_id, "cancelled", "cancelled")
            return self._end(job_id, "failed", f"the training process ended unexpectedly (exit code {child.exitcode})")
        silent = time.time() - heartbeat
        if silent > STALE_S:
            message = f"the training process stopped (no heartbeat for {silent:.0f} s)"
            return self._end(job_id, "failed", message, beaten_before=heartbeat + 1e-3)
        return False

    def reap(self) -> None:
        """Fail every live job whose process has gone (see _check_alive)."""
        with self.db.read() as con:
            rows = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {LIVE_SQL}").fetchall()
        for row in rows:
            self._check_alive(row)

    def _end(self, job_id: str, state: str, message: str, beaten_before: float = float("inf")) -> bool:
        """End a live job as `state` (only if its heartbeat is older than `beaten_before`), removing its half-written
        folders -> whether it was ended here."""
        with self.db.write() as con:
            ended = con.execute(
                "UPDATE jobs SET state = ?, message = ?, eta_s = NULL, model = NULL "
                f"WHERE id = ? AND {LIVE_SQL} AND heartbeat < ?",
                (state, message, job_id, beaten_before),
            ).rowcount
        if ended:
            remove_output(self.root / "models" / job_id)
        return bool(ended)

    def cancel_job(self, job_id: str) -> JobStatus:
        """Stop a queued or running job and everything it started; 409 when it has already ended. The job's
        process group is killed from here when it runs on this machine; elsewhere its heartbeat thread sees the
        request within seconds and ends it."""
        status = self.job(job_id)
        if not status.live:
            raise RegistryError(f"job {job_id!r} has already ended ({status.state})", 409)
        with self.db.write() as con:
            con.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            host, pid = con.execute("SELECT host, pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
        child = self._children.get(job_id)
        if child is not None:
            self._kill(child.pid, child)
        elif pid is not None and host == socket.gethostname():
            self._kill(pid)
        else:  # on another machine: its heartbeat thread cancels it
            deadline = time.time() + 15
            while self.job(job_id).live and time.time() < deadline:
                time.sleep(0.25)
            return self.job(job_id)
        self._end(job_id, "cancelled", "cancelled")
        return self.job(job_id)

    @staticmethod
    def _kill(pid: int, child: multiprocessing.process.BaseProcess | None = None) -> None:
        """End the job process `pid` and its process group: SIGTERM, then SIGKILL after 10 s."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            for kill in (os.killpg, os.kill):  # a job killed before its setsid() has no group yet: its PID ends it
                try:
                    kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            if child is not None:
                child.join(wait)
                if not child.is_alive():
                    return
            else:
                deadline = time.time() + wait
                while time.time() < deadline:
                    if gone(pid):
                        return
                    time.sleep(0.1)


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie, waiting for its parent to reap it, has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def modified(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
