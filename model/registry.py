"""The runs folder: uploaded datasets, trained models, training jobs and the model the app serves.

    RUNS/datasets/ID/      labels.csv + original/, dataset.json (uploads come through workspace.Workspace)
    RUNS/models/ID/        model directories (model.modeldir), written by quick or full training
    RUNS/jobs/ID/          status.json (written atomically by the job's process), log.txt
    RUNS/embeddings/       quick mode's embedding cache
    RUNS/active.json       {"model": ID}: the model the pages use, kept across restarts

Nothing is written outside RUNS; folders half-written by a killed run are removed at start. Dataset uploads
(one at a time, within the runs folder's quota) are workspace.Workspace.create_dataset's. A job runs in its
own process (multiprocessing "spawn": TensorFlow and fork do not mix), the leader of its own process group, so
cancelling ends it and anything it started. One job runs at a time.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from model.modeldir import SHIPPED_MODEL_DIR, ModelDirError, read_model_dir, write_atomically

SHIPPED = "shipped"
DATA = "data"  # the --data dataset
FEEDBACK = "feedback"  # the --feedback folder, once it holds corrected photos
MODES = ("quick", "full")
JOBS = ("local", "ray")  # where full-mode jobs train: this machine, or a Ray cluster (workspace/ray_jobs.py)
BACKBONES = ("shipped", "imagenet")  # quick mode's frozen backbone: the shipped model's (MIML-tuned) or ImageNet's
MAX_EPOCHS = 100
ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")  # matched whole (fullmatch): no trailing newline
LEFTOVERS = ("*.partial-write", "*.training", "*.old")  # what a run killed halfway leaves in models/ or datasets/
LIVE = ("queued", "running")
ROOT = Path(__file__).resolve().parent.parent


class RegistryError(Exception):
    """A request the registry refuses; `status` is the HTTP status that fits it."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status or self.status


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, value: Any) -> None:
    """Write `value` as JSON to `path` atomically (readers see the old file or the new one, never half)."""
    write_atomically(path, json.dumps(value, indent=1).encode())


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return default


def checked_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not ID.fullmatch(value):
        shown = repr(value[:70]) if isinstance(value, str) else f"a JSON {type(value).__name__}"
        raise RegistryError(f"{what} must be an id of lowercase letters, digits and dashes, not {shown}", 404)
    return value


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
        self._lock = threading.Lock()
        self._running = None  # (job id, Process) of the job this server started
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Remove the folders that runs killed halfway left behind (OUT.partial-write, OUT.training, OUT.old)."""
        for sub in ("models", "datasets"):
            for pattern in LEFTOVERS:
                for leftover in (self.root / sub).glob(pattern):
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
        infos = [read_json(p / "dataset.json") for p in (self.root / "datasets").iterdir()]
        infos = sorted((i for i in infos if i), key=lambda i: i["created"], reverse=True)
        return out + [{k: i[k] for k in ("dataset", "name", "photos", "labels", "created")} for i in infos]

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset (not --data or --feedback, nor the one a live job trains on)."""
        if isinstance(dataset_id, str) and dataset_id in self.folders:
            raise RegistryError(f"{self.folders[dataset_id][1]} is not an upload: it is not deleted from here", 403)
        path = self.dataset_path(dataset_id)
        live = self.live_job()
        if live and live["dataset"] == dataset_id:
            raise RegistryError(f"job {live['job']!r} is training on dataset {dataset_id!r}; cancel it first", 409)
        shutil.rmtree(path)

    def dataset_path(self, dataset_id: str) -> Path:
        if isinstance(dataset_id, str) and dataset_id in self.folders:  # a JSON object is no id (404 below)
            return self.folders[dataset_id][0]
        path = self.root / "datasets" / checked_id(dataset_id, "dataset")
        if not (path / "dataset.json").is_file():
            raise RegistryError(f"no dataset {dataset_id!r}; upload one first (GET /api/datasets lists them)", 404)
        return path

    # --- models --------------------------------------------------------------------------------
    def model_path(self, model_id: str) -> Path:
        if model_id == SHIPPED:
            return SHIPPED_MODEL_DIR
        path = self.root / "models" / checked_id(model_id, "model")
        if not (path / "model.keras").is_file():
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
        created = training.created or (
            None
            if model_id == SHIPPED
            else datetime.fromtimestamp((path / "model.keras").stat().st_mtime, timezone.utc).isoformat(
                timespec="seconds"
            )
        )
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
        trained = []
        for path in (self.root / "models").iterdir():
            if ID.fullmatch(path.name):
                try:
                    trained.append(self._describe(path.name, path))
                except ModelDirError as e:  # half-written or damaged: not offered, and the reason is shown
                    if unreadable is not None:
                        unreadable.append({"id": path.name, "error": str(e).replace(str(path) + "/", "")})
        return [self._describe(SHIPPED, SHIPPED_MODEL_DIR)] + sorted(
            trained, key=lambda m: (m["created"], m["id"]), reverse=True
        )

    def delete_model(self, model_id: str) -> None:
        if model_id == SHIPPED:
            raise RegistryError("the shipped model cannot be deleted", 403)
        path = self.model_path(model_id)
        if self.active() == model_id:
            raise RegistryError(
                f"model {model_id!r} is the one in use; switch to another model before deleting it", 409
            )
        shutil.rmtree(path)

    def active(self) -> str:
        """The id of the model the pages use (the shipped one unless switched); a deleted or damaged choice
        falls back to the shipped one."""
        chosen = (read_json(self.root / "active.json") or {}).get("model", SHIPPED)
        try:
            self.check_model(chosen)
            return chosen
        except RegistryError:
            return SHIPPED

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
        """Remember `model_id` as the one in use, once its files have been checked."""
        self.check_model(model_id)
        write_json(self.root / "active.json", {"model": model_id})

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
        with self._lock:
            if self.live_job():
                raise RegistryError(
                    f"job {self._running[0]!r} is still running; one job runs at a time (wait for it or cancel it)", 409
                )
            job_id = f"{mode}-{datetime.now():%Y%m%d-%H%M%S}-{os.urandom(2).hex()}"
            folder = self.root / "jobs" / job_id
            folder.mkdir()
            status = {
                "job": job_id,
                "dataset": dataset_id,
                "mode": mode,
                "epochs": epochs,
                "state": "queued",
                "progress": 0.0,
                "message": "starting",
                "eta_s": None,
                "model": None,
                "curve": [],
                "created": now(),
            }
            write_json(folder / "status.json", status)
            spec = {
                "folder": str(folder),
                "data": str(data),
                "mode": mode,
                "epochs": epochs,
                "out": str(self.root / "models" / job_id),
                "cache": str(self.root / "embeddings"),
                "backbone": backbone or "shipped",
                "train_args": list(train_args),
                "jobs": self.jobs if mode == "full" else "local",
                "ray_address": self.ray_address,
            }
            process = multiprocessing.get_context("spawn").Process(target=run_job, args=(spec,), daemon=True)
            process.start()
            self._running = (job_id, process)
        return job_id

    def timing(self, mode: str) -> dict[str, Any] | None:
        """{"seconds", "photos", "created"} of the newest finished job of `mode` here, or None before the first."""
        done = [read_json(p / "status.json") for p in (self.root / "jobs").iterdir()]
        done = [j for j in done if j and j.get("mode") == mode and j.get("state") == "done" and j.get("seconds")]
        newest = max(done, key=lambda j: j["created"], default=None)
        return newest and {k: newest[k] for k in ("seconds", "photos", "created")}

    def live_job(self) -> dict[str, Any] | None:
        """The status of the job this server started, while it is queued or running; else None."""
        status = self._running and self.job(self._running[0])
        return status if status and status["state"] in LIVE else None

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's status; one whose process has gone without saying so is reported failed."""
        folder = self.root / "jobs" / checked_id(job_id, "job")
        status = read_json(folder / "status.json")
        if status is None:
            raise RegistryError(f"no job {job_id!r}", 404)
        running = self._running if self._running and self._running[0] == job_id else None
        if status["state"] in LIVE and (running is None or not running[1].is_alive()):
            code = running[1].exitcode if running else None
            status.update(
                state="failed",
                eta_s=None,
                message="the training process ended unexpectedly"
                + (f" (exit code {code})" if code is not None else " (the server restarted)"),
            )
            write_json(folder / "status.json", status)
        return status

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Stop a queued or running job and everything it started; 409 when it has already ended."""
        with self._lock:
            status = self.job(job_id)
            if status["state"] not in LIVE:
                raise RegistryError(f"job {job_id!r} has already ended ({status['state']})", 409)
            process = self._running[1]
            try:
                os.killpg(process.pid, signal.SIGTERM)  # the job and `python -m model.train` under it
            except ProcessLookupError:
                pass
            process.terminate()  # a job cancelled before its setsid() has no group yet: its PID ends it
            process.join(10)
            if process.is_alive():
                os.killpg(process.pid, signal.SIGKILL)
                process.join(5)
            out = self.root / "models" / job_id
            for leftover in (out, out.with_name(out.name + ".partial-write"), out.with_name(out.name + ".training")):
                shutil.rmtree(leftover, ignore_errors=True)
            status.update(state="cancelled", eta_s=None, message="cancelled", model=None)
            write_json(self.root / "jobs" / job_id / "status.json", status)
            return status


# --- inside the job's process ---------------------------------------------------------------------
def run_job(spec: dict[str, Any]) -> None:
    """The job process: become a process group leader, train, and keep status.json current."""
    os.setsid()
    folder = Path(spec["folder"])
    status = read_json(folder / "status.json")

    def report(progress, message, eta_s=None, **extra):
        status.update(
            state="running",
            progress=round(min(progress, 1.0), 4),
            message=message,
            eta_s=None if eta_s is None else round(eta_s),
            **extra,
        )
        write_json(folder / "status.json", status)

    started = time.time()
    try:
        report(0.01, "starting")
        if spec["mode"] == "quick":
            from model.cli import quiet_tensorflow

            quiet_tensorflow()
            from model.quick import train_quick

            train_quick(spec["data"], spec["out"], spec["cache"], spec["backbone"], progress=report)
        elif spec["jobs"] == "ray":  # full mode on a Ray cluster (docs/deploy.md)
            from workspace.ray_jobs import run_full_on_ray

            run_full_on_ray(spec, report)
        else:
            run_full(spec, report)
        split = read_model_dir(spec["out"]).card.split
        status.update(
            state="done",
            progress=1.0,
            message="done",
            eta_s=None,
            model=Path(spec["out"]).name,
            seconds=round(time.time() - started, 1),  # what the training page's promise is made of (timing)
            photos=sum(n or 0 for n in (split.train, split.validation, split.test)),
        )
    except Exception as e:  # anything: the page must say why the job failed
        status.update(state="failed", eta_s=None, message=str(e) or type(e).__name__)
    write_json(folder / "status.json", status)


def die_with_parent() -> None:
    """In the child, before it runs: SIGTERM when the job process ends, however it ends (Linux's PR_SET_PDEATHSIG),
    so a job killed alone (or with its server) leaves no model.train behind."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def progress_line(line: str) -> dict | None:
    """One of model.train's --progress-json lines (docs/progress.md) as a dict; None for any other line."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and {"phase", "progress", "message"} <= set(event) else None


def follow_progress(lines: Iterable[str], report: Callable[..., None], log: IO[str]) -> str | None:
    """Turn model.train's progress lines into `report(progress, message, eta_s, curve=...)` calls, each epoch's
    losses into a point of the learning curve; other lines go to `log`. Returns the error a "failed" line said."""
    curve, failed = [], None
    for line in lines:
        event = progress_line(line)
        if event is None:  # not a progress line (a library printing to stdout): kept with the log
            log.write(line)
            log.flush()
        elif event["phase"] == "failed":
            failed = event["message"]
        else:
            if "epoch" in event and "val_loss" in event:
                curve.append({"epoch": event["epoch"], "loss": event["loss"], "val_loss": event["val_loss"]})
            report(event["progress"], event["message"][:200], event.get("eta_s"), curve=curve)
    return failed


def train_command(spec: dict[str, Any], python: str = sys.executable) -> list[str]:
    """The full-mode job's `python -m model.train ... --progress-json -`, to run from the project's root."""
    epochs = str(spec["epochs"] or 20)
    args = ["--data", spec["data"], "--out", spec["out"], "--epochs", epochs, "--progress-json", "-"]
    return [python, "-m", "model.train", *args, *spec["train_args"]]


def run_full(spec: dict[str, Any], report: Callable[..., None]) -> None:
    """`python -m model.train --progress-json -` in a subprocess: its progress lines (on stdout) become the job's
    progress, ETA and learning curve; what it prints for people (on stderr) goes to log.txt."""
    args = train_command(spec)
    report(0.03, "starting model.train", None, curve=[])
    with open(Path(spec["folder"]) / "log.txt", "w") as log_file:
        process = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=log_file, text=True, preexec_fn=die_with_parent
        )
        failed = follow_progress(process.stdout, report, log_file)
        if process.wait() != 0:
            raise RuntimeError(failed or f"model.train failed (exit code {process.returncode}); see {log_file.name}")
