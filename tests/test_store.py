"""The runs folder's store (workspace.registry on workspace.store's SQLite): the one-job lease across processes, the
heartbeat that fails a silent job, a cancel carried out by the job's own process, the version counter, and the
import of a runs folder in the old JSON layout. No TensorFlow: jobs here are real processes that beat, not train."""

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from model.modeldir import SHIPPED_MODEL_DIR
from tests.helpers import ROOT, make_tiny_dataset
from workspace import Registry, RegistryError
from workspace.registry import STALE_S
from workspace.store import SCHEMA_VERSION, DatasetRecord, Photo


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def add_dataset(registry, dataset_id="d"):
    folder = registry.root / "datasets" / dataset_id
    folder.mkdir(parents=True)
    registry.db.add_dataset(
        DatasetRecord(dataset_id, "d.zip", ["a", "b"], folder, "2026-01-01"), [Photo("1.jpg", "")], {}
    )
    return dataset_id


def live_job(registry, job_id, dataset="d", heartbeat=None, host=None, pid=None):
    """A job row as start_job writes it and its process updates it (the process is the test's own, or none)."""
    with registry.db.write() as con:
        con.execute(
            "INSERT INTO jobs (id, dataset, mode, state, created, owner, heartbeat, host, pid) "
            "VALUES (?, ?, 'quick', 'running', '2026-01-01', 'elsewhere:1', ?, ?, ?)",
            (job_id, dataset, time.time() if heartbeat is None else heartbeat, host, pid),
        )


def test_one_live_job_across_every_registry_on_the_folder(runs):
    a, b = Registry(runs), Registry(runs)  # two processes' registries: nothing of the job is in memory
    add_dataset(a)
    live_job(a, "quick-1")
    with pytest.raises(RegistryError, match="job 'quick-1' is still running") as e:
        b.start_job("d", "quick")
    assert e.value.status == 409 and b.live_job().job == "quick-1"
    with pytest.raises(sqlite3.IntegrityError, match="one_live_job"):  # the store refuses a second live row itself
        live_job(b, "quick-2")
    with pytest.raises(RegistryError, match="is training on dataset 'd'"):
        b.delete_dataset("d")


def test_a_silent_job_is_failed_by_whoever_looks_and_its_folders_removed(runs):
    a, b = Registry(runs), Registry(runs)
    add_dataset(a)
    live_job(a, "quick-1", heartbeat=time.time() - STALE_S - 5)
    for leftover in ("quick-1", "quick-1.partial-write", "quick-1.training"):
        (runs / "models" / leftover).mkdir()
    status = b.job("quick-1")
    assert status.state == "failed"
    assert status.message == f"the training process stopped (no heartbeat for {STALE_S + 5} s)"
    assert list((runs / "models").iterdir()) == []
    assert a.live_job() is None and a.job("quick-1").state == "failed"
    live_job(a, "quick-2")  # the slot is free again
    assert b.live_job().job == "quick-2"


BEATING_JOB = """
import sys, time
from workspace.jobs import Heartbeat, JobRow
from workspace.store import Database
from pathlib import Path
row = JobRow(Database(sys.argv[1]), sys.argv[2])
row.update(host=sys.argv[3])
Heartbeat(row, Path(sys.argv[4])).start()
print("beating", flush=True)
time.sleep(120)
"""


def beating_job(registry, job_id, host):
    """A real job process (the heartbeat thread of workspace.jobs, no training): -> Popen."""
    out = registry.root / "models" / job_id
    (out.parent / (out.name + ".training")).mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(BEATING_JOB), str(registry.db.path), job_id, host, str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout.readline() == "beating\n"
    return process


def test_the_heartbeat_keeps_a_job_alive_and_a_cancel_from_another_machine_ends_it(runs):
    registry = Registry(runs)
    add_dataset(registry)
    live_job(registry, "quick-1", heartbeat=time.time() - STALE_S + 3)  # would be failed in 3 s without beats
    process = beating_job(registry, "quick-1", "another-machine")
    time.sleep(4)
    assert registry.job("quick-1").state == "running"
    status = registry.cancel_job("quick-1")  # not this host: the job's own heartbeat thread carries it out
    assert status.state == "cancelled" and status.message == "cancelled"
    assert process.wait(10) == 1
    assert not (runs / "models" / "quick-1.training").exists()


def test_a_job_on_this_machine_started_elsewhere_is_cancelled_by_killing_its_group(runs):
    registry = Registry(runs)
    add_dataset(registry)
    live_job(registry, "quick-1")
    process = beating_job(registry, "quick-1", socket.gethostname())
    with registry.db.write() as con:
        con.execute("UPDATE jobs SET pid = ? WHERE id = 'quick-1'", (process.pid,))
    assert Registry(runs).cancel_job("quick-1").state == "cancelled"  # another process's registry
    assert process.wait(5) == -15
    with pytest.raises(RegistryError, match=r"already ended \(cancelled\)"):
        registry.cancel_job("quick-1")


def fake_model(runs, model_id):
    shutil.copytree(SHIPPED_MODEL_DIR, runs / "models" / model_id)


def test_every_switch_and_model_deletion_moves_the_version(runs):
    a, b = Registry(runs), Registry(runs)
    fake_model(runs, "mine")
    start = b.version()
    a.set_active("mine")
    assert (b.version(), b.active()) == (start + 1, "mine")
    with pytest.raises(RegistryError, match="is the one in use"):
        b.delete_model("mine")
    a.set_active("shipped")
    b.delete_model("mine")
    assert a.version() == start + 3 and a.model_ids() == {"shipped"} and not (runs / "models" / "mine").exists()
    with pytest.raises(RegistryError, match="no model 'mine'"):
        a.set_active("mine")


def old_layout(root):
    """A runs folder as the previous version left it: its state in JSON files."""
    folder = make_tiny_dataset(root / "datasets" / "old-upload-abc", n=6)
    (folder / "dataset.json").write_text(
        json.dumps({"dataset": folder.name, "name": "old.zip", "created": "2026-05-01T10:00:00+00:00", "photos": 6})
    )
    fake_model(root, "quick-old")
    jobs = {
        "quick-old": {"state": "done", "model": "quick-old", "seconds": 12.5, "photos": 6, "progress": 1.0},
        "full-cut": {"state": "running", "model": None, "progress": 0.4, "epochs": 5},
    }
    for job_id, status in jobs.items():
        (root / "jobs" / job_id).mkdir(parents=True)
        base = {"job": job_id, "dataset": folder.name, "mode": job_id.split("-")[0], "message": "m", "curve": []}
        (root / "jobs" / job_id / "status.json").write_text(json.dumps({**base, "created": "2026-05-02", **status}))
    (root / "active.json").write_text('{"model": "quick-old"}')


def test_a_runs_folder_in_the_old_layout_is_imported_once(runs):
    old_layout(runs)
    registry = Registry(runs)
    assert registry.db.version() == SCHEMA_VERSION
    (listed,) = registry.datasets()
    assert listed == {
        "dataset": "old-upload-abc",
        "name": "old.zip",
        "photos": 6,
        "labels": ["red", "green", "blue"],
        "created": "2026-05-01T10:00:00+00:00",
    }
    assert registry.db.labelled("old-upload-abc")["1.jpg"]  # its labels came with it
    assert [m["id"] for m in registry.models()] == ["shipped", "quick-old"] and registry.active() == "quick-old"
    done, cut = registry.job("quick-old"), registry.job("full-cut")
    assert (done.state, done.seconds, done.photos, done.model) == ("done", 12.5, 6, "quick-old")
    assert registry.timing("quick") == {"seconds": 12.5, "photos": 6, "created": "2026-05-02"}
    assert (cut.state, cut.epochs) == ("failed", 5) and "the server restarted" in cut.message
    assert registry.live_job() is None

    # the JSON files are no longer read: changing or removing them changes nothing, and a second start adds nothing
    (runs / "active.json").write_text('{"model": "shipped"}')
    (runs / "datasets" / "old-upload-abc" / "dataset.json").unlink()
    shutil.rmtree(runs / "jobs" / "quick-old")
    again = Registry(runs)
    assert again.active() == "quick-old" and [d["dataset"] for d in again.datasets()] == ["old-upload-abc"]
    assert again.job("quick-old").state == "done"
    with again.db.read() as con:
        assert con.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2
        assert con.execute("SELECT COUNT(*) FROM photos").fetchone()[0] == 6


def test_an_import_killed_halfway_is_finished_on_the_next_start(runs):
    old_layout(runs)
    registry = Registry(runs)
    with registry.db.write() as con:  # as if killed before the import committed its last transaction
        con.execute("DELETE FROM settings WHERE key = 'imported'")
        con.execute("DELETE FROM jobs")
        con.execute("DELETE FROM models")
    again = Registry(runs)
    assert again.job("quick-old").state == "done" and again.active() == "quick-old"
    assert [d["dataset"] for d in again.datasets()] == ["old-upload-abc"]


def test_leftovers_of_a_job_running_in_another_process_are_kept(runs):
    registry = Registry(runs)
    add_dataset(registry)
    live_job(registry, "quick-1", pid=os.getpid(), host=socket.gethostname())
    for leftover in ("quick-1.training", "quick-0.training"):
        (runs / "models" / leftover).mkdir()
    Registry(runs)  # another process starts on the folder
    assert sorted(p.name for p in (runs / "models").iterdir()) == ["quick-1.training"]


def test_a_store_written_by_a_newer_version_is_refused_with_one_line(runs):
    from workspace import WorkspaceError

    runs.mkdir()
    with sqlite3.connect(runs / "workspace.sqlite") as con:
        con.execute("PRAGMA user_version = 99")
    with pytest.raises(
        WorkspaceError, match=rf"written by a newer version \(schema 99, this one knows {SCHEMA_VERSION}\)"
    ):
        Registry(runs)


def test_the_ml_library_never_imports_the_workspace():
    """model/ is the ML library: the runs folder's state (and the old registry -> quick -> train -> inference ->
    registry cycle) lives in workspace/, which imports model/, never the other way round."""
    import ast

    for path in (ROOT / "model").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "workspace" or n.startswith("workspace.") for n in names), path
