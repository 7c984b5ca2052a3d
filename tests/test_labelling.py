"""The labeller's store and API: datasets from photos without labels, decisions saved at once and kept through
kill -9, the queue, the export. The live model runs on real embeddings (the shipped backbone, LiteRT)."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from tests.helpers import ROOT
from workspace.store import MIGRATIONS, DatasetRecord, LabelStore, Photo

pytestmark = pytest.mark.needs_data
LABELS = ["sea", "sunset", "trees"]


def miml_rows(miml_data, n, start=0):
    rows = list(csv.DictReader(open(miml_data / "labels.csv")))
    return rows[start::50][:n]  # every 50th photo: all five MIML labels among them


def photos_zip(miml_data, rows, folder="holiday"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for r in rows:
            zf.write(miml_data / "original" / r["image"], f"{folder}/{r['image']}")
    return buf.getvalue()


def create(client, data, name="photos.zip", labels=None):
    form = {"file": (io.BytesIO(data), name)}
    if labels is not None:
        form["labels"] = labels
    return client.post("/api/datasets", data=form, content_type="multipart/form-data")


@pytest.fixture(scope="module")
def client(scenes, tmp_path_factory):
    from app import create_app

    runs = tmp_path_factory.mktemp("runs")
    return create_app(scenes=scenes, runs_dir=runs).test_client()


@pytest.fixture(scope="module")
def photos40(client, miml_data):
    rows = miml_rows(miml_data, 40)
    r = create(client, photos_zip(miml_data, rows), labels="sea, sunset,trees")
    assert r.status_code == 201, r.json
    return r.json["dataset"], rows


def truth(row):
    return [l for l in LABELS if row[l] == "1"]


def test_a_dataset_from_photos_without_labels(client, photos40):
    dataset, rows = photos40
    summary = client.get(f"/api/datasets/{dataset}").json
    assert (summary["photos"], summary["labels"], summary["labelled"]) == (40, LABELS, 0)
    assert summary["per_label"]["sea"] == {"positive": 0, "negative": 0} and summary["ready"] is False
    assert summary["lacking"] == LABELS
    photo = client.get(f"/api/datasets/{dataset}/photos/{rows[0]['image']}")
    assert photo.status_code == 200 and photo.data[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    "labels, message",
    [
        (None, "no labels.csv in the ZIP and no label names"),
        ("", "no labels.csv in the ZIP and no label names"),
        ("sea, sea", "'sea' is given twice"),
        ("sea, blue sky", "'blue sky' is not a label name"),
        (",".join(f"l{i}" for i in range(21)), "give 1 to 20 label names, not 21"),
    ],
)
def test_label_names_are_checked(client, miml_data, labels, message):
    r = create(client, photos_zip(miml_data, miml_rows(miml_data, 2), folder="a/b"), labels=labels)
    assert r.status_code == 400 and message in r.json["error"], r.json


def test_api_errors(client, photos40):
    dataset, rows = photos40
    image = rows[0]["image"]
    cases = [
        (client.get("/api/datasets/nope-123456"), 404, "no dataset 'nope-123456'"),
        (client.put(f"/api/datasets/{dataset}/labels/{image}", json={"labels": ["sky"]}), 400, "unknown label 'sky'"),
        (client.put(f"/api/datasets/{dataset}/labels/none.jpg", json={"labels": ["sea"]}), 404, "no photo 'none.jpg'"),
        (client.put(f"/api/datasets/{dataset}/labels/{image}", json={"labels": "sea"}), 400, "a list of label names"),
        (client.put(f"/api/datasets/{dataset}/labels/{image}", data="sea"), 400, 'send {"labels": [...]}'),
        (client.get(f"/api/datasets/{dataset}/queue?strategy=best"), 400, "strategy must be one of"),
        (client.get(f"/api/datasets/{dataset}/queue?strategy=likely:sky"), 400, "unknown label 'sky'"),
        (client.get(f"/api/datasets/{dataset}/queue?k=0"), 400, "k must be a whole number from 1 to 100"),
        (client.get(f"/api/datasets/{dataset}/queue?k=ten"), 400, "k must be a whole number"),
        (client.get(f"/api/datasets/{dataset}/photos/none.jpg"), 404, "no photo 'none.jpg'"),
        (client.get("/api/datasets/nope-123456/export"), 404, "no dataset"),
        (create(client, b"not a zip", labels="sea"), 400, "not a ZIP archive"),
    ]
    for response, status, message in cases:
        assert response.status_code == status and message in response.json["error"], response.json
    assert client.get(f"/api/datasets/{dataset}").json["labelled"] == 0  # nothing was saved by the bad requests


def wait_for(condition, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_labelling_teaches_the_live_model_and_the_queue_skips_labelled_photos(client, photos40):
    dataset, rows = photos40
    by_name = {r["image"]: r for r in rows}
    wait_for(lambda: client.get(f"/api/datasets/{dataset}").json["embedded"] == 40)
    labelled = set()
    for _ in range(4):  # label what the queue offers, 5 at a time
        offered = [p["image"] for p in client.get(f"/api/datasets/{dataset}/queue?k=5").json["photos"]]
        assert len(offered) == 5 and not labelled & set(offered)
        for image in offered:
            r = client.put(f"/api/datasets/{dataset}/labels/{image}", json={"labels": truth(by_name[image])})
            assert r.status_code == 200 and r.json["labels"] == truth(by_name[image])
            labelled.add(image)
    for strategy in ("auto", "random", "uncertain", "likely:sea"):
        offered = [
            p["image"] for p in client.get(f"/api/datasets/{dataset}/queue?k=100&strategy={strategy}").json["photos"]
        ]
        assert len(offered) == 20 and not labelled & set(offered), strategy

    summary = wait_for(lambda: not (s := client.get(f"/api/datasets/{dataset}").json)["learning"] and s)
    assert summary["labelled"] == 20
    counts = {l: sum(l in truth(by_name[i]) for i in labelled) for l in LABELS}
    assert {l: summary["per_label"][l]["positive"] for l in LABELS} == counts
    suggesting = [l for l in LABELS if min(counts[l], 20 - counts[l]) >= 2]
    assert summary["suggesting"] == suggesting and set(summary["estimate"]["average_precision"]) == set(suggesting)
    photos = client.get(f"/api/datasets/{dataset}/queue?k=20&strategy=likely:{suggesting[0]}").json["photos"]
    assert all(set(p["probabilities"]) == set(suggesting) for p in photos)
    probabilities = [p["probabilities"][suggesting[0]] for p in photos]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(p["suggested"] == [l for l in suggesting if p["probabilities"][l] >= 0.5] for p in photos)

    export = client.get(f"/api/datasets/{dataset}/export")
    with zipfile.ZipFile(io.BytesIO(export.data)) as zf:
        table = list(csv.reader(io.StringIO(zf.read("labels.csv").decode())))
        assert table[0] == ["image", *LABELS] and len(table) == 21  # labelled photos only
        assert {row[0]: [l for l, v in zip(LABELS, row[1:]) if v == "1"] for row in table[1:]} == {
            i: truth(by_name[i]) for i in labelled
        }
        assert sorted(zf.namelist()) == sorted(["labels.csv", *(f"original/{i}" for i in labelled)])


def test_undo_makes_a_photo_unlabelled_and_keeps_the_history(client, photos40):
    dataset, rows = photos40
    image = rows[-1]["image"]
    client.put(f"/api/datasets/{dataset}/labels/{image}", json={"labels": ["sea"]})
    before = client.get(f"/api/datasets/{dataset}").json["labelled"]
    assert client.delete(f"/api/datasets/{dataset}/labels/{image}").status_code == 200
    assert client.get(f"/api/datasets/{dataset}").json["labelled"] == before - 1
    offered = [p["image"] for p in client.get(f"/api/datasets/{dataset}/queue?k=100&strategy=random").json["photos"]]
    assert image in offered


def folder_zip(miml_data, layout):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, image in layout:
            zf.write(miml_data / "original" / image, path)
    return buf.getvalue()


def test_folder_per_label_layout(client, miml_data, tmp_path):
    layout = [
        ("mine/sea/a.jpg", "1.jpg"),
        ("mine/sunset/a-copy.jpg", "1.jpg"),  # the same photo in two folders: both labels
        ("mine/sunset/b.jpg", "2.jpg"),
        ("mine/trees/a.jpg", "3.jpg"),  # another photo with a name already taken: renamed
    ]
    r = create(client, folder_zip(miml_data, layout), "mine.zip")
    assert r.status_code == 201 and (r.json["photos"], r.json["labels"], r.json["labelled"]) == (3, LABELS, 3)
    dataset = r.json["dataset"]
    export = zipfile.ZipFile(io.BytesIO(client.get(f"/api/datasets/{dataset}/export").data))
    rows = list(csv.reader(io.StringIO(export.read("labels.csv").decode())))
    assert rows == [["image", *LABELS], ["a.jpg", "1", "1", "0"], ["b.jpg", "0", "1", "0"], ["a-2.jpg", "0", "0", "1"]]
    assert export.read("original/a-2.jpg") == (miml_data / "original" / "3.jpg").read_bytes()
    bad = create(client, folder_zip(miml_data, [("sea/x.jpg", "1.jpg"), ("trees/deeper/y.jpg", "2.jpg")]), "bad.zip")
    assert bad.status_code == 400 and "'trees/deeper/y.jpg' is not in it" in bad.json["error"]


def csv_zip(miml_data, text, images):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labels.csv", text)
        for image in images:
            zf.write(miml_data / "original" / image, f"original/{image}")
    return buf.getvalue()


def test_labels_csv_with_empty_cells_means_not_labelled(client, miml_data):
    text = "image,sea,sunset,trees\n1.jpg,1,0,0\n2.jpg,,,\n3.jpg,0,0,1\n"
    r = create(client, csv_zip(miml_data, text, ["1.jpg", "2.jpg", "3.jpg"]), "partly.zip")
    assert r.status_code == 201 and (r.json["photos"], r.json["labelled"]) == (3, 2)
    dataset = r.json["dataset"]
    assert [p["image"] for p in client.get(f"/api/datasets/{dataset}/queue?k=10&strategy=random").json["photos"]] == [
        "2.jpg"
    ]
    client.post("/api/jobs", json={"dataset": dataset, "mode": "nope"})  # a job start writes labels.csv first
    written = (client.application.extensions["workspace"].datasets_dir / dataset / "labels.csv").read_text()
    assert written == "image,sea,sunset,trees\n1.jpg,1,0,0\n3.jpg,0,0,1\n"  # an unlabelled photo is never a negative
    half = create(client, csv_zip(miml_data, "image,sea,sunset\n1.jpg,1,\n", ["1.jpg"]), "half.zip")
    assert half.status_code == 400 and "line 2" in half.json["error"] and "leave them all empty" in half.json["error"]


# --- the store ----------------------------------------------------------------------------------------
WRITER = """
import sys
from workspace.store import LabelStore
store = LabelStore(sys.argv[1])
for i in range(10**6):
    d = store.set_labels("d", f"{i % 50}.jpg", ["a"] if i % 2 else ["b"], source=sys.argv[2])
    print(d.id, d.image, flush=True)
"""


def new_store(path):
    store = LabelStore(path)
    record = DatasetRecord("d", "d", ["a", "b"], path.parent, "2026-01-01")
    store.add_dataset(record, [Photo(f"{i}.jpg", f"{i:064x}") for i in range(50)], {})
    return store


def test_schema_version_and_wal(tmp_path):
    import sqlite3

    store = new_store(tmp_path / "w.sqlite")
    assert store.version() == len(MIGRATIONS) >= 2  # the labels, then the runs folder (models, jobs, settings)
    con = sqlite3.connect(tmp_path / "w.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= {
        "datasets",
        "photos",
        "decisions",
        "labels",
    }


def test_kill_9_loses_at_most_the_decision_in_flight(tmp_path):
    path = tmp_path / "w.sqlite"
    new_store(path)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "writer"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    confirmed = [writer.stdout.readline().split() for _ in range(200)]  # 200 decisions reported as saved
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    more = [line.split() for line in writer.stdout.read().splitlines()]  # those printed before the kill landed
    store = LabelStore(path)
    history = store.history("d")
    ids = [d.id for d in history]
    assert all(int(i) in ids for i, _ in confirmed + more)
    assert len(history) <= len(confirmed) + len(more) + 1  # at most the one in flight besides
    last = {}
    for d in history:
        last[d.image] = d.labels
    assert store.labelled("d") == last  # the current labels are the last decision of each photo


TWO_WRITERS = """
import sys
from workspace.store import LabelStore
store = LabelStore(sys.argv[1])
for i in range(150):
    store.set_labels("d", "7.jpg", [sys.argv[2]], source=sys.argv[2])
"""


def test_two_writers_last_wins_and_both_are_in_the_history(tmp_path):
    path = tmp_path / "w.sqlite"
    store = new_store(path)
    writers = [
        subprocess.Popen([sys.executable, "-c", TWO_WRITERS, str(path), label], cwd=ROOT, stderr=subprocess.PIPE)
        for label in ("a", "b")
    ]
    assert [w.wait() for w in writers] == [0, 0], [w.stderr.read() for w in writers]  # no 'database is locked'
    history = store.history("d", "7.jpg")
    assert [sum(d.source == s for d in history) for s in ("a", "b")] == [150, 150]
    assert store.labelled("d")["7.jpg"] == history[-1].labels
    assert [d.id for d in history] == sorted(d.id for d in history)
    times = [d.at for d in history]
    assert times == sorted(times)


def test_a_dataset_uploaded_before_the_labeller_opens_in_it(client, miml_data):
    runs = client.application.extensions["workspace"].root
    folder = runs / "datasets" / "old-upload-abc123"
    (folder / "original").mkdir(parents=True)
    for image in ("1.jpg", "2.jpg"):
        (folder / "original" / image).write_bytes((miml_data / "original" / image).read_bytes())
    (folder / "labels.csv").write_text("image,sea,trees\n1.jpg,1,0\n2.jpg,0,1\n")
    (folder / "dataset.json").write_text(
        json.dumps({"dataset": folder.name, "name": "old.zip", "created": "x", "photos": 2, "labels": ["sea", "trees"]})
    )
    summary = client.get(f"/api/datasets/{folder.name}").json
    assert (summary["labelled"], summary["labels"]) == (2, ["sea", "trees"])
    r = client.put(f"/api/datasets/{folder.name}/labels/2.jpg", json={"labels": ["sea", "trees"]})
    assert r.status_code == 200
    assert client.get(f"/api/datasets/{folder.name}").json["per_label"]["sea"] == {"positive": 2, "negative": 0}
    assert client.get("/api/datasets/data").status_code == 404  # --data is read-only here
