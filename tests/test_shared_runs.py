"""Two app processes (waitress, as `python visualization.py --runs R` starts them) on one runs folder, as behind
nginx: what one does, the other sees. A dataset, a quick job, the one-job rule, a model switch (served by the other
from its next request) and deletion, a server killed while its job runs on (the orphan is still running, and
cancelled from the other), and a server killed with its job (the other fails the job at its first look once the
heartbeat is STALE_S old, well within 30 s, and can start a new one)."""

import os
import re
import signal
import time

import pytest
import requests

from tests.helpers import OWN_LABELS, dataset_zip, free_port, relabelled, start
from workspace.registry import STALE_S, Registry
from workspace.store import Database

pytestmark = [pytest.mark.slow, pytest.mark.needs_data]  # a quick-mode job trains; two servers load the model


class Server:
    def __init__(self, runs):
        self.port = free_port()
        self.process = start("--port", str(self.port), "--runs", str(runs), "--no-explore")
        self.url = f"http://127.0.0.1:{self.port}"

    def ready(self):
        line = self.process.stdout.readline()
        assert line.strip() == f"MIML Scenes ready at http://localhost:{self.port}/", self.process.stderr.read()
        return self

    def __call__(self, method, path, **kwargs):
        return requests.request(method, self.url + path, timeout=60, **kwargs)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)

    def kill(self):
        """kill -9, reaped. The wait is generous: on a loaded machine a process of 2 GB can take seconds to go."""
        self.process.kill()
        self.process.wait(120)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-runs")


@pytest.fixture(scope="module")
def servers(runs):
    a, b = Server(runs), Server(runs)  # started side by side
    a.ready(), b.ready()
    yield a, b
    a.stop(), b.stop()


@pytest.fixture(autouse=True)
def no_job_left(runs):
    """Each test starts with the one-job slot free, whatever the test before it left running."""
    yield
    registry = Registry(runs)
    live = registry.live_job()
    if live is not None:
        registry.cancel_job(live.job)


@pytest.fixture(scope="module")
def dataset(servers, miml_data):
    a, _ = servers
    photos = relabelled(miml_data, n=48, every=40)
    r = a("POST", "/api/datasets", files={"file": ("shared.zip", dataset_zip(miml_data, photos))})
    assert r.status_code == 201, r.text
    return r.json()["dataset"]


def job_process(runs, job_id, timeout=60):
    """The pid of the job's process, once it runs (the store says it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with Database(runs / "workspace.sqlite").read() as con:
            pid = con.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        if pid:
            return pid
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never started")


def wait_for(server, job_id, states, timeout):
    started = time.time()
    while time.time() - started < timeout:
        status = server("GET", f"/api/jobs/{job_id}").json()
        if status["state"] in states:
            return status
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} still {status} after {timeout} s")


def test_a_dataset_uploaded_on_one_process_is_listed_on_the_other(servers, dataset):
    _, b = servers
    listed = {d["dataset"]: d for d in b("GET", "/api/datasets").json()}
    assert listed[dataset]["photos"] == 48 and listed[dataset]["labels"] == OWN_LABELS


def test_a_job_started_on_one_process_is_followed_and_fenced_on_the_other(servers, dataset, runs):
    a, b = servers
    r = a("POST", "/api/jobs", json={"dataset": dataset, "mode": "quick"})
    assert r.status_code == 202
    job = r.json()["job"]
    assert b("GET", f"/api/jobs/{job}").json()["state"] in ("queued", "running")
    second = b("POST", "/api/jobs", json={"dataset": dataset, "mode": "quick"})
    assert second.status_code == 409 and job in second.json()["error"]
    assert b("DELETE", f"/api/datasets/{dataset}").status_code == 409  # it trains on it
    status = wait_for(b, job, ("done", "failed"), 240)
    assert status["state"] == "done" and status["model"] == job, status
    assert a("GET", f"/api/jobs/{job}").json() == b("GET", f"/api/jobs/{job}").json()

    # a switch on A is served by B from B's very next request (it reads the store's version first)
    assert a("POST", "/api/models/active", json={"model": job}).status_code == 200
    assert b("GET", "/api/model").json()["labels"] == OWN_LABELS
    assert [m["id"] for m in b("GET", "/api/models").json() if m["active"]] == [job]

    # deleted on B: A never serves it again, not even when asked for it by name
    assert b("POST", "/api/models/active", json={"model": "shipped"}).status_code == 200
    assert a("GET", "/api/model").json()["labels"] != OWN_LABELS
    assert b("DELETE", f"/api/models/{job}").status_code == 200
    r = a("POST", f"/api/predict?model={job}", files={"image": ("x.jpg", b"not read")})
    assert r.status_code == 404 and f"no model '{job}'" in r.json()["error"]


def test_a_job_outliving_its_killed_server_runs_on_and_is_cancelled_from_the_other(servers, dataset, runs):
    a, b = servers
    job = a("POST", "/api/jobs", json={"dataset": dataset, "mode": "quick"}).json()["job"]
    pid = job_process(runs, job)
    a.kill()  # kill -9 of the server alone: the job's process lives on
    time.sleep(3)
    assert b("GET", f"/api/jobs/{job}").json()["state"] == "running"
    r = b("DELETE", f"/api/jobs/{job}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
    assert not list((runs / "models").glob(f"{job}*"))


def test_a_server_killed_with_its_job_is_failed_within_30_s_and_the_slot_freed(servers, dataset, runs):
    _, b = servers
    a = Server(runs).ready()  # A again
    try:
        job = a("POST", "/api/jobs", json={"dataset": dataset, "mode": "quick"}).json()["job"]
        pid = job_process(runs, job)
        a.kill()
        os.killpg(pid, signal.SIGKILL)  # the job's process group: kill -9 of everything the server started
        status = wait_for(b, job, ("failed",), 60)
        silent = re.fullmatch(r"the training process stopped \(no heartbeat for (\d+) s\)", status["message"])
        assert silent and STALE_S <= int(silent[1]) < 30, status  # failed by B at its first look past STALE_S
        assert not list((runs / "models").glob(f"{job}*"))
        r = b("POST", "/api/jobs", json={"dataset": dataset, "mode": "quick"})
        assert r.status_code == 202
        assert b("DELETE", f"/api/jobs/{r.json()['job']}").json()["state"] == "cancelled"
    finally:
        a.stop()
