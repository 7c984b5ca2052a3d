"""Inside a training job's process: train, keep the job's row current, beat, and stop when asked.

The job's process (multiprocessing "spawn": TensorFlow and fork do not mix) is the leader of its own process group,
so killing the group ends it and anything it started. A thread writes the row's `heartbeat` every HEARTBEAT_S and
reads `cancel_requested`: a job whose heartbeat stops is failed by whichever process looks next
(workspace.registry), and a cancel asked from another machine is carried out here. Every write is guarded by the
row still being live, so a job failed or cancelled elsewhere never comes back as done.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from model.modeldir import read_model_dir
from workspace.store import Database

HEARTBEAT_S = 2.0  # how often a job's process says it is alive
LIVE = ("queued", "running")
LIVE_SQL = "state IN ('queued', 'running')"
ROOT = Path(__file__).resolve().parent.parent


def output_folders(out: Path | str) -> list[Path]:
    """The model directory a job writes and what a run killed halfway leaves beside it."""
    out = Path(out)
    return [out, out.with_name(out.name + ".partial-write"), out.with_name(out.name + ".training")]


def remove_output(out: Path | str) -> None:
    for folder in output_folders(out):
        shutil.rmtree(folder, ignore_errors=True)


class JobRow:
    """The job's row, as its own process writes it: every write only while the job is still live."""

    def __init__(self, db: Database, job_id: str) -> None:
        self.db, self.job_id = db, job_id

    def update(self, **values: Any) -> bool:
        """Set `values` on the row if the job is still live -> whether it was."""
        if "curve" in values:
            values["curve"] = json.dumps(values["curve"])
        columns = ", ".join(f"{k} = ?" for k in values)
        with self.db.write() as con:
            cursor = con.execute(
                f"UPDATE jobs SET {columns} WHERE id = ? AND {LIVE_SQL}", [*values.values(), self.job_id]
            )
        return cursor.rowcount == 1

    def beat(self) -> tuple[bool, bool]:
        """Write the heartbeat -> (still live, cancel requested)."""
        with self.db.write() as con:
            row = con.execute(
                f"UPDATE jobs SET heartbeat = ? WHERE id = ? AND {LIVE_SQL} RETURNING cancel_requested",
                (time.time(), self.job_id),
            ).fetchone()
        return row is not None, bool(row and row[0])


class Heartbeat(threading.Thread):
    """Beats every HEARTBEAT_S; when the job was cancelled (from any machine) or ended elsewhere, ends the process."""

    def __init__(self, row: JobRow, out: Path) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.row, self.out = row, out

    def run(self) -> None:
        while True:
            try:
                live, cancel = self.row.beat()
            except Exception:  # a locked or unreachable database for a moment: the next beat tries again
                live, cancel = True, False
            if cancel or not live:
                self.stop(cancel)
            time.sleep(HEARTBEAT_S)

    def stop(self, cancel: bool) -> None:
        """End this job's process (and what it started), its half-written folders removed."""
        if cancel:
            self.row.update(state="cancelled", eta_s=None, message="cancelled", model=None)
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            # a Ray job's handler (workspace.ray_jobs) stops the job on the cluster, then ends the process
            atexit.register(remove_output, self.out)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        stop_children()
        remove_output(self.out)
        os._exit(1)


_children: list[subprocess.Popen] = []


def stop_children() -> None:
    for child in _children:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()


def run_job(spec: dict[str, Any]) -> None:
    """The job process: become a process group leader, beat, train, and keep the job's row current."""
    os.setsid()
    row = JobRow(Database(spec["db"]), spec["job"])
    row.update(state="running", host=socket.gethostname(), pid=os.getpid(), heartbeat=time.time())
    Heartbeat(row, Path(spec["out"])).start()

    def report(progress, message, eta_s=None, **extra):
        row.update(
            state="running",
            progress=round(min(progress, 1.0), 4),
            message=message,
            eta_s=None if eta_s is None else round(eta_s),
            **extra,
        )

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
        finish(row, spec["out"], time.time() - started)
    except Exception as e:  # anything: the page must say why the job failed
        row.update(state="failed", eta_s=None, message=str(e) or type(e).__name__)
        remove_output(spec["out"])


def finish(row: JobRow, out: str, seconds: float) -> None:
    """Mark the job done and register its model, in one transaction; a job ended meanwhile keeps no model."""
    card = read_model_dir(out).card
    split = card.split
    model_id = Path(out).name
    with row.db.write() as con:
        done = con.execute(
            f"UPDATE jobs SET state = 'done', progress = 1.0, message = 'done', eta_s = NULL, model = ?, seconds = ?, "
            f"photos = ? WHERE id = ? AND {LIVE_SQL}",
            (
                model_id,
                round(seconds, 1),  # what the training page's promise is made of (Registry.timing)
                sum(n or 0 for n in (split.train, split.validation, split.test)),
                row.job_id,
            ),
        ).rowcount
        if done:
            con.execute(
                "INSERT OR IGNORE INTO models (id, created, job) VALUES (?, ?, ?)",
                (model_id, card.training.created or "", row.job_id),
            )
    if not done:
        remove_output(out)


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
        _children.append(process)
        failed = follow_progress(process.stdout, report, log_file)
        if process.wait() != 0:
            raise RuntimeError(failed or f"model.train failed (exit code {process.returncode}); see {log_file.name}")
