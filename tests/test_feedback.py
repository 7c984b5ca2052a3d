"""The --feedback folder's store (workspace.feedback): DIR/feedback.sqlite is the truth, labels.csv is written from it,
a folder from before the database is imported, kill -9 loses at most the save in flight; and several processes of
several threads writing feedback and the labeller's decisions at once lose nothing and never see a locked database.
(POST /api/feedback over HTTP: tests/test_explore.py.)"""

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tests.hostile import good_members, jpeg, zip_bytes
from workspace import Feedback, FeedbackError, FeedbackLabelsError, Workspace

AB = ["a", "b"]


def csv_rows(folder):
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.reader(f))


def test_the_rows_live_in_the_database_and_labels_csv_is_written_from_it(tmp_path):
    feedback = Feedback(tmp_path)
    assert feedback.labels is None and not (tmp_path / "labels.csv").exists()  # no feedback, no labels.csv
    first, _ = feedback.save(jpeg(1), ["b"], AB)
    second, created = feedback.save(jpeg(2), ["a", "b"], AB)
    assert created and feedback.save(jpeg(1), ["a"], AB) == (first, False)  # sent again: its row is updated
    assert [(r.image, r.labels) for r in feedback.rows()] == [(first, ["a"]), (second, ["a", "b"])]
    assert csv_rows(tmp_path) == [["image", "a", "b"], [first, "1", "0"], [second, "1", "1"]]
    con = sqlite3.connect(tmp_path / "feedback.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1 == Feedback(tmp_path).version()
    assert con.execute("SELECT image, labels FROM feedback ORDER BY id").fetchall() == [
        (first, '["a"]'),
        (second, '["a", "b"]'),
    ]
    (tmp_path / "labels.csv").write_text("image,a,b\n")  # a labels.csv the kill of a save left behind, say
    reopened = Feedback(tmp_path)
    assert csv_rows(tmp_path)[1:] == [[first, "1", "0"], [second, "1", "1"]] and reopened.labels == AB
    with pytest.raises(FeedbackLabelsError, match="collects the labels a, b, and the model in use has a, c"):
        reopened.save(jpeg(3), ["a"], ["a", "c"])
    assert len(reopened.rows()) == 2 and len(list((tmp_path / "original").iterdir())) == 2


def test_a_folder_from_before_the_database_is_imported_on_first_open(tmp_path):
    (tmp_path / "original").mkdir()
    old = {"0123456789abcdef.jpg": "1,0", "fedcba9876543210.jpg": "1,1"}
    for image in old:
        (tmp_path / "original" / image).write_bytes(jpeg(len(image)))
    text = "image,a,b\n" + "".join(f"{image},{v}\n" for image, v in old.items())
    (tmp_path / "labels.csv").write_text(text)
    feedback = Feedback(tmp_path)
    assert feedback.labels == AB
    assert [(r.image, r.labels) for r in feedback.rows()] == [(image, l) for image, l in zip(old, [["a"], AB])]
    assert (tmp_path / "labels.csv").read_text() == text  # the same file, now written from the database
    name, _ = feedback.save(jpeg(5), [], AB)
    assert Feedback(tmp_path).rows()[-1].image == name and len(Feedback(tmp_path).rows()) == 3  # imported once


@pytest.mark.parametrize(
    "text, words",
    [
        ("photo,a,b\n", "its header is 'photo,a,b', not 'image,<label>,...'"),
        ("image,a,b\nx.jpg,1\n", "line 2 is not 'image' and 2 values of 0 or 1"),
        ("image,a,b\nx.jpg,1,0\ny.jpg,yes,0\n", "line 3 is not 'image' and 2 values of 0 or 1"),
    ],
)
def test_a_labels_csv_that_cannot_be_imported_is_one_error_naming_it_and_nothing_is_changed(tmp_path, text, words):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(FeedbackError, match="labels.csv") as e:
        Feedback(tmp_path)
    assert words in str(e.value)
    assert (tmp_path / "labels.csv").read_text() == text
    con = sqlite3.connect(tmp_path / "feedback.sqlite")
    assert con.execute("SELECT COUNT(*) FROM label_set").fetchone() == (0,)  # the import was one transaction


def test_a_database_from_a_newer_version_or_not_a_database_is_refused(tmp_path):
    Feedback(tmp_path)
    sqlite3.connect(tmp_path / "feedback.sqlite").execute("PRAGMA user_version=7")
    with pytest.raises(FeedbackError, match=r"feedback.sqlite: written by a newer version \(schema 7"):
        Feedback(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "feedback.sqlite").write_bytes(b"not a database, but some bytes" * 100)
    with pytest.raises(
        FeedbackError, match="other/feedback.sqlite: cannot use it for feedback .file is not a database"
    ):
        Feedback(tmp_path / "other")


SAVER = """
import sys
from tests.hostile import jpeg
from workspace import Feedback
feedback = Feedback(sys.argv[1])
photo = jpeg(0)
for i in range(10**6):
    name, created = feedback.save(photo + i.to_bytes(4, "big"), ["a"] if i % 2 else ["b"], ["a", "b"])
    print(name, flush=True)
"""


def test_kill_9_loses_at_most_the_save_in_flight_and_never_leaves_a_row_without_its_photo(tmp_path):
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    acknowledged = [saver.stdout.readline().strip() for _ in range(60)]
    os.kill(saver.pid, signal.SIGKILL)
    saver.wait()
    acknowledged += saver.stdout.read().split()  # printed before the kill landed
    feedback = Feedback(tmp_path)
    rows = [r.image for r in feedback.rows()]
    assert set(acknowledged) <= set(rows) and len(rows) <= len(acknowledged) + 1  # at most the one in flight
    assert all((tmp_path / "original" / image).stat().st_size > 0 for image in rows)
    assert [r[0] for r in csv_rows(tmp_path)[1:]] == rows  # labels.csv says what the database says


WRITER = """
import json, os, sys, threading, time
import numpy as np
from PIL import Image
from tests.hostile import jpeg
from workspace import Feedback, Workspace

runs, folder, dataset, seconds, process = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]

def colours(paths):  # a cheap embedding for the live model: each photo's mean colour in a 2x2 grid
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((2, 2)), np.float32).ravel() for p in paths])

workspace, feedback = Workspace(runs, embed=colours), Feedback(folder)
images = [p.image for p in workspace.store.photos(dataset)]
photo = jpeg(0)
saved, decided, errors = [[] for _ in range(8)], [[] for _ in range(8)], []
stop = time.monotonic() + seconds

def write(thread):  # what the app does for POST /api/feedback and for a decision on /label: one after the other
    i = 0
    while time.monotonic() < stop:
        try:
            name, _ = feedback.save(photo + f"{process}-{thread}-{i}".encode(), ["a"] if i % 2 else [], ["a", "b"])
            saved[thread].append(name)
            decision = workspace.decide(dataset, images[i % len(images)], [["a"], ["b"], ["a", "b"], []][i % 4])
            decided[thread].append(decision.id)
        except Exception as e:
            errors.append(repr(e))
        i += 1

threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"saved": saved, "decided": decided, "errors": errors[:5]}), flush=True)
# Every write is acknowledged by now. The live model's daemon thread may be inside native code (OpenMP) while the
# interpreter tears down, which was seen once to abort the process ("terminate called without an active exception").
os._exit(0)
"""


@pytest.mark.slow  # 20 s of writing
def test_two_processes_of_eight_threads_writing_feedback_and_labels_lose_no_row(tmp_path):
    """Issue 18's concurrency test, at the API the app calls (Feedback.save, Workspace.decide) in two plain Python
    processes rather than two waitress apps: each app process loads the model before it serves (create_app took
    23 s and 0.9 GB on this machine under load), which would make the test cost a minute for no more SQLite."""
    runs, folder = tmp_path / "runs", tmp_path / "feedback"
    dataset = Workspace(runs).create_dataset(io.BytesIO(zip_bytes(good_members(8))), "shared.zip").dataset
    imported = len(Workspace(runs).history(dataset))
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(runs), str(folder), dataset, "20", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for name in ("A", "B")
    ]
    results = []
    for w in writers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        results.append(json.loads(out))
    assert [r["errors"] for r in results] == [[], []]  # no `database is locked`, nor anything else, reached a caller
    saved = [name for r in results for t in r["saved"] for name in t]
    decided = [i for r in results for t in r["decided"] for i in t]
    assert all(len(t) > 0 for r in results for t in r["saved"] + r["decided"])  # no thread of either was starved
    rows = [r.image for r in Feedback(folder).rows()]
    assert sorted(rows) == sorted(saved)  # every acknowledged save is one row, and no other row
    assert [r[0] for r in csv_rows(folder)[1:]] == rows and all((folder / "original" / i).exists() for i in rows)
    history = Workspace(runs).history(dataset)
    assert sorted(d.id for d in history[imported:]) == sorted(decided)  # every acknowledged decision, no other
    print(
        f"\n{len(saved)} feedback rows and {len(decided)} decisions in 20 s: {(len(saved) + len(decided)) / 20:.0f} writes/s"
    )
