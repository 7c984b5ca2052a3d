"""Full-mode jobs on a Ray cluster (`--jobs ray`, workspace/ray_jobs.py) through the registry the app uses.

The module starts its own single-node Ray head (`ray start --head --block`, its dashboard for the Job Submission
API, every port free and its files in a temporary folder) and stops it at the end by ending that command, which
takes down the processes it started and nothing else: `ray stop` would stop every Ray on this machine, other
people's too. The cluster runs on this machine, so it sees the project and the runs folder at the same paths.
The tests without the `ray` marker need no cluster: the entrypoint, and the flags' checks."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

import visualization
from model.inference import Classifier
from workspace import Registry, RegistryError
from workspace.jobs import ROOT
from tests.helpers import TINY_LABELS, follow, free_port, train_processes
from workspace.ray_jobs import TIMEOUT_S, entrypoint

TINY = ["--warmup-epochs", "1", "--input-size", "96"]  # with epochs=1: one warm-up and one fine-tuning epoch
PORTS = ("port", "dashboard-port", "node-manager-port", "object-manager-port", "ray-client-server-port")
PORTS += ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")


@pytest.fixture(scope="module")
def starting_ray_head():
    """A Ray head starting for this module (1 CPU, 100 MB of object store): (its process, its dashboard's address,
    its log). The tests that need no cluster ask for it too, so that it starts while they wait on their timeouts."""
    temp = tempfile.mkdtemp(prefix="rayjobs")  # short: Ray's socket paths must stay under 107 characters
    ports = {name: free_port() for name in PORTS}
    command = ["ray", "start", "--head", "--block", "--num-cpus=1", "--object-store-memory=100000000"]
    command += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1"]
    command += [f"--{name}={port}" for name, port in ports.items()]
    command += ["--min-worker-port=0", "--max-worker-port=0", f"--temp-dir={temp}", "--disable-usage-stats"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # else Ray writes a token into ~/.ray
    with open(os.path.join(temp, "start.log"), "w+") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        yield head, f"http://127.0.0.1:{ports['dashboard-port']}", log
        ray_processes = descendants(head.pid)
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started, then exits
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
    shutil.rmtree(temp, ignore_errors=True)
    deadline = time.time() + 15
    while (left := ray_processes & alive()) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left behind: {left}"


def parents():
    """{pid: parent pid} of the processes alive now (zombies apart)."""
    out = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after the command's name, which may hold spaces
        except (OSError, IndexError):
            continue
        if entry.isdigit() and fields[0] != "Z":
            out[int(entry)] = int(fields[1])
    return out


def alive():
    return set(parents())


def descendants(pid):
    """`pid`'s children, theirs, and so on."""
    tree, found = parents(), {pid}
    while grown := {p for p, parent in tree.items() if parent in found} - found:
        found |= grown
    return found - {pid}


def unreachable(address):
    """The job's message when nothing listens at `address`."""
    return (
        f"cannot reach the Ray cluster at {address} (Failed to connect to Ray at address: {address}.): is a head "
        f"with its dashboard running there (ray start --head --include-dashboard=true)?"
    )


@pytest.fixture(scope="module")
def ray_head(starting_ray_head):
    """The dashboard address of the module's Ray head, once it answers."""
    head, address, log = starting_ray_head
    started = time.time()
    while True:
        try:
            JobSubmissionClient(address)
            return address
        except ConnectionError:
            log.seek(0)
            assert head.poll() is None and time.time() - started < 90, f"no Ray head: {log.read()[-2000:]}"
            time.sleep(0.5)


@pytest.mark.ray
@pytest.mark.slow  # a Ray head starts for these (about 13 s), two of them train
def test_a_cluster_that_is_not_there_fails_the_job_with_a_message(starting_ray_head, tiny_dataset, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    registry = Registry(tmp_path / "runs", data_dir=tiny_dataset, jobs="ray", ray_address=closed)
    final = follow(registry, registry.start_job("data", "full", epochs=1), timeout=60)[-1]
    assert final["state"] == "failed" and final["message"] == unreachable(closed)


@pytest.mark.ray
@pytest.mark.slow  # a Ray head starts for these (about 13 s), two of them train
def test_a_cluster_that_never_answers_fails_the_job_after_the_timeout(starting_ray_head, tiny_dataset, tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        registry = Registry(tmp_path / "runs", data_dir=tiny_dataset, jobs="ray", ray_address=address)
        started = time.time()
        final = follow(registry, registry.start_job("data", "full", epochs=1), timeout=60)[-1]
    assert final["state"] == "failed" and "Read timed out" in final["message"], final
    assert final["message"].startswith(f"cannot reach the Ray cluster at {address} (")
    assert TIMEOUT_S[1] <= time.time() - started < TIMEOUT_S[1] + 30  # its answer's timeout, not a hang


@pytest.mark.slow  # a job process starts
@pytest.mark.needs_data  # the app's model and dataset (the scenes fixture)
def test_the_api_reports_a_cluster_that_is_not_there_as_a_failed_job(scenes, tiny_dataset, tmp_path):
    from app import create_app

    closed = f"http://127.0.0.1:{free_port()}"
    runs = tmp_path / "runs"
    client = create_app(
        scenes=scenes, data_dir=tiny_dataset, runs_dir=runs, jobs="ray", ray_address=closed
    ).test_client()
    r = client.post("/api/jobs", json={"dataset": "data", "mode": "full", "epochs": 1})
    assert r.status_code == 202
    job, started = r.get_json()["job"], time.time()
    while (status := client.get(f"/api/jobs/{job}").get_json())["state"] in ("queued", "running"):
        assert time.time() - started < 60, status
        time.sleep(0.2)
    assert status["state"] == "failed" and status["message"] == unreachable(closed)


@pytest.mark.ray
@pytest.mark.slow
def test_a_dataset_the_nodes_do_not_see_fails_the_job_with_model_trains_own_error(ray_head, tmp_path):
    nowhere = tmp_path / "nowhere"  # as a node without the shared storage would see the dataset
    registry = Registry(tmp_path / "runs", data_dir=nowhere, jobs="ray", ray_address=ray_head)
    job = registry.start_job("data", "full", epochs=1)
    final = follow(registry, job, timeout=120)[-1]
    assert final["state"] == "failed" and final["message"] == f"error: {nowhere}: dataset directory not found"
    assert JobSubmissionClient(ray_head).get_job_status(job) == JobStatus.FAILED


@pytest.mark.ray
@pytest.mark.slow  # a Ray head starts for these (about 13 s), two of them train
def test_a_full_job_on_ray_is_done_with_its_progress_curve_and_model_here(ray_head, tiny_dataset, tmp_path):
    registry = Registry(tmp_path / "runs", data_dir=tiny_dataset, jobs="ray", ray_address=ray_head)
    job = registry.start_job("data", "full", epochs=1, train_args=TINY)
    seen = follow(registry, job, timeout=240)
    final = seen[-1]
    assert final["state"] == "done", final
    assert JobSubmissionClient(ray_head).get_job_status(job) == JobStatus.SUCCEEDED  # the job id is Ray's too
    # Polling samples the job's row: under load a short-lived message can be overwritten before it is read, so
    # the test asks for some progress between 0 and 1 on the way, and the whole story from the curve and the log.
    running = [s for s in seen if s["state"] == "running" and 0 < s["progress"] < 1]
    assert running and all(s["message"] and s["state"] == "running" for s in running), seen
    assert final["progress"] == 1.0 and final["model"] == job and final["photos"] == 36
    assert [p["epoch"] for p in final["curve"]] == [1, 2] and all(p["val_loss"] > 0 for p in final["curve"])
    log = (registry.root / "jobs" / job / "log.txt").read_text()  # Ray's log of the job, progress lines apart
    assert f"Running entrypoint for job {job}" in log and "warm-up (head only): epoch 1/1 took" in log
    assert '"phase"' not in log
    listed = {m["id"]: m for m in registry.models()}
    assert listed[job]["mode"] == "full" and listed[job]["labels"] == TINY_LABELS
    c = Classifier(registry.model_path(job))  # written by the Ray job into the runs folder, and it loads
    assert c.size == 96 and c.labels == TINY_LABELS
    history = c.card.training.history
    assert [round(float(r["val_loss"]), 4) for r in history] == [round(p["val_loss"], 4) for p in final["curve"]]


@pytest.mark.ray
@pytest.mark.slow  # a Ray head starts for these (about 13 s), two of them train
def test_cancelling_the_job_stops_the_ray_job(ray_head, tiny_dataset, tmp_path):
    registry = Registry(tmp_path / "runs", data_dir=tiny_dataset, jobs="ray", ray_address=ray_head)
    job = registry.start_job("data", "full", epochs=5, train_args=TINY)
    started = time.time()
    while not train_processes(job):  # model.train running under the Ray job
        assert time.time() - started < 90 and registry.job(job).state in ("queued", "running"), registry.job(job)
        time.sleep(0.2)
    assert registry.cancel_job(job).state == "cancelled"  # returns once the job's process has ended...
    assert JobSubmissionClient(ray_head).get_job_status(job) == JobStatus.STOPPED  # ...which waited for Ray
    assert train_processes(job) == []
    assert registry.job(job).state == "cancelled"
    assert not any(p.name.startswith(job) for p in (registry.root / "models").iterdir())


def test_the_entrypoint_runs_model_train_from_the_project_with_the_jobs_paths():
    spec = {"data": "/shared/runs/datasets/a b", "out": "/shared/runs/models/full-1", "epochs": None}
    assert entrypoint({**spec, "train_args": ["--input-size", "96"]}) == (
        f"cd {ROOT} && exec python -m model.train --data '/shared/runs/datasets/a b' --out /shared/runs/models/full-1 "
        f"--epochs 20 --progress-json - --input-size 96"
    )


def test_jobs_must_be_local_or_ray(tmp_path):
    with pytest.raises(RegistryError, match="^jobs must be one of local, ray, not 'cluster'$"):
        Registry(tmp_path, jobs="cluster")


def test_the_server_refuses_a_ray_address_without_jobs_ray_and_warns_of_a_cluster_not_there(capsys):
    with pytest.raises(SystemExit) as exit:
        visualization.main(["--ray-address", "http://127.0.0.1:8265"])
    assert exit.value.code == 2 and "error: --ray-address is for --jobs ray" in capsys.readouterr().err
    closed = f"http://127.0.0.1:{free_port()}"
    assert visualization.check_ray(closed)  # the server still starts: the cluster may come up later
    assert capsys.readouterr().err == f"warning: {unreachable(closed)}\n"
