"""Full-mode training on a Ray cluster (`--jobs ray`): the job's process submits `python -m model.train` through
Ray's Job Submission API and follows it there, as workspace.jobs.run_full follows its local subprocess.

The app's job id is the Ray submission id: `ray job status ID`, `ray job logs ID` and the dashboard's Jobs page name
it. The entrypoint runs from this project's root with the --data and --out paths of a local run, so the cluster's
nodes must see the project and the runs folder at the same paths (shared storage; docs/deploy.md). Every second
the job's log is read: model.train's progress lines become the job's progress, ETA and learning curve
(workspace.jobs.follow_progress), the other lines go to RUNS/jobs/ID/log.txt; the job's final status says done or
failed. SIGTERM (a cancel: the registry ends the job's process group) stops the Ray job. Every request to the
cluster has a timeout, so an address that does not answer fails the job within seconds instead of hanging it.
"""

from __future__ import annotations

import shlex
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

from workspace.jobs import ROOT, follow_progress, train_command

TIMEOUT_S = (5, 20)  # to connect to the cluster's dashboard, and for its answer
STOP_TIMEOUT_S = (1, 2)  # when cancelling: the registry kills the job's process 10 s after asking it to end...
STOP_WAIT_S = 6  # ...so it waits this long for Ray to end model.train (SIGTERM, then SIGKILL 3 s later)
POLL_S = 1.0  # how often the job's status and log are read
DEFAULT_ADDRESS = "$RAY_ADDRESS or http://127.0.0.1:8265"  # Ray's own default when no address is given


class RayJobError(RuntimeError):
    """A Ray job that could not be submitted, followed or finished; its message is one line."""


class Client(JobSubmissionClient):
    """Ray's job client with a timeout on every request (it sets none: an address that swallows packets would
    hang the job for minutes)."""

    timeout_s = TIMEOUT_S

    def _do_request(self, method, endpoint, **kwargs):
        return super()._do_request(method, endpoint, timeout=self.timeout_s, **kwargs)


def one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


def connect(address: str | None) -> Client:
    """A client of the Ray cluster whose dashboard is at `address`; RayJobError when it does not answer."""
    try:
        return Client(address)
    except Exception as e:  # requests' errors, Ray's ConnectionError and RuntimeError, a malformed address
        raise RayJobError(
            f"cannot reach the Ray cluster at {address or DEFAULT_ADDRESS} ({one_line(e)}): is a head with its "
            f"dashboard running there (ray start --head --include-dashboard=true)?"
        ) from None


def entrypoint(spec: dict[str, Any]) -> str:
    """The shell command the cluster runs: model.train from the project's root, with `python` as the node has it."""
    return f"cd {shlex.quote(str(ROOT))} && exec {shlex.join(train_command(spec, 'python'))}"


def log_lines(client: Client, job_id: str) -> Iterator[str]:
    """The job's log line by line as it grows, until the job has ended (its log is read once more after that)."""
    read, partial = 0, ""
    while True:
        ended = client.get_job_status(job_id).is_terminal()  # before the log: once ended, the log is whole
        text = client.get_job_logs(job_id)
        lines = (partial + text[read:]).splitlines(keepends=True)
        read = len(text)
        partial = lines.pop() if lines and not lines[-1].endswith("\n") else ""
        yield from lines
        if ended:
            if partial:
                yield partial + "\n"
            return
        time.sleep(POLL_S)


def stop_on_sigterm(client: Client, job_id: str) -> None:
    """From now on, SIGTERM stops the Ray job and waits for it to end (so the registry, which then removes what
    the job half-wrote, removes it for good), then ends this process."""

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the registry sends two (its process group, then its pid)
        client.timeout_s = STOP_TIMEOUT_S
        deadline = time.monotonic() + STOP_WAIT_S
        try:
            client.stop_job(job_id)
            while not client.get_job_status(job_id).is_terminal() and time.monotonic() < deadline:
                time.sleep(0.2)
        except Exception:  # not submitted yet, or the cluster is gone: nothing more to stop from here
            pass
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def ended_message(client: Client, job_id: str, log: Path) -> str:
    info = client.get_job_info(job_id)
    if info.status == JobStatus.STOPPED:
        return f"the Ray job was stopped on the cluster (ray job stop {job_id})"
    if info.driver_exit_code is not None:
        return f"model.train failed on the Ray cluster (exit code {info.driver_exit_code}); see {log}"
    return f"the Ray job {info.status.value.lower()}: {one_line(ValueError(info.message or 'no reason given'))}"


def run_full_on_ray(spec: dict[str, Any], report: Callable[..., None]) -> None:
    """workspace.jobs.run_full's contract, on the Ray cluster at spec["ray_address"]: report() calls as the job
    goes, the model in spec["out"] when it returns, RayJobError (one line) when the job fails."""
    address, job_id, log = spec["ray_address"], Path(spec["folder"]).name, Path(spec["folder"]) / "log.txt"
    report(0.02, f"connecting to the Ray cluster at {address or DEFAULT_ADDRESS}", None, curve=[])
    client = connect(address)
    stop_on_sigterm(client, job_id)
    try:
        client.submit_job(entrypoint=entrypoint(spec), submission_id=job_id, entrypoint_num_cpus=1)
        report(0.03, f"submitted to the Ray cluster at {address or DEFAULT_ADDRESS}", None, curve=[])
        with open(log, "w") as log_file:
            failed = follow_progress(log_lines(client, job_id), report, log_file)
        status = client.get_job_status(job_id)
        message = None if status == JobStatus.SUCCEEDED else failed or ended_message(client, job_id, log)
    except Exception as e:  # the cluster went away, refused the submission or answered nonsense
        raise RayJobError(f"Ray job {job_id} at {address or DEFAULT_ADDRESS}: {one_line(e)}") from None
    if message:
        raise RayJobError(message)
    if not (Path(spec["out"]) / "model.keras").is_file():
        raise RayJobError(
            f"the Ray job succeeded, but its model is not in {spec['out']} here: the cluster's nodes must write to "
            f"this runs folder (shared storage, docs/deploy.md)"
        )
