"""Hostile inputs to the surfaces that change state (dataset import, jobs, models, feedback): each gets its
status and a message that says what is wrong, within a memory ceiling and a time limit, and the runs folder
keeps nothing of it. The hostile files are built in memory (tests/hostile.py)."""

import io
import json
import os
import shutil
import struct
import time

import pytest

from model.data import MAX_CSV_BYTES, MAX_PHOTOS
from model.datasets import MAX_SKIPPED
from model.modeldir import SHIPPED_MODEL_DIR
from tests.hostile import (
    PeakRSS,
    csv_row_bomb,
    good_members,
    jpeg,
    kaggle_mat,
    kaggle_zip,
    labels_csv,
    mat_bomb,
    patched,
    png_claiming,
    zip_bytes,
)

MEMORY_CEILING = 500 << 20  # what one request may add to the server's RSS
TIME_LIMIT_S = 10


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def app(runs):
    from app import create_app
    from app.scenes import Scenes

    return create_app(scenes=Scenes(), runs_dir=runs)


@pytest.fixture()
def client(app):
    return app.test_client()


def dataset_zip(data, name="set.zip"):
    return {"data": {"file": (io.BytesIO(data), name)}, "content_type": "multipart/form-data"}


def nested(depth):
    return {"data": "[" * depth + "]" * depth, "content_type": "application/json"}


def photo(url_extra=""):
    return {"data": {"image": (io.BytesIO(jpeg()), "a.jpg")}, "content_type": "multipart/form-data"}


def utf8_flag_with_bad_name():
    data = zip_bytes({**good_members(), "é.jpg": jpeg()})  # a non-ASCII name: zipfile sets the UTF-8 flag
    return data.replace("é.jpg".encode(), b"\xff\xfe.jpg")


def duplicate_rows():
    return zip_bytes({**good_members(), "labels.csv": labels_csv([("1.jpg", 1, 0), ("2.jpg", 0, 1), ("1.jpg", 0, 1)])})


def missing_photos(n=150):
    rows = [("1.jpg", 1, 0)] + [(f"gone{i}.jpg", 0, 1) for i in range(n)]
    return zip_bytes({"labels.csv": labels_csv(rows), "original/1.jpg": jpeg()})


def labelled(header):
    members = good_members()
    members["labels.csv"] = labels_csv([("1.jpg", 1, 0), ("2.jpg", 0, 1)], header=header)
    return zip_bytes(members)


# (case, method, url, request builder, expected status, words in the message)
CASES = [
    # 1. the Kaggle .mat
    (
        "mat declaring 2^30 targets",
        "post",
        "/api/datasets",
        lambda: dataset_zip(kaggle_zip(mat_bomb(30))),
        400,
        "declares the shape 1x1073741824",
    ),
    (
        "mat declaring 2^29 targets",
        "post",
        "/api/datasets",
        lambda: dataset_zip(kaggle_zip(mat_bomb(29))),
        400,
        "over the limit",
    ),
    (
        "mat over its member limit",
        "post",
        "/api/datasets",
        lambda: dataset_zip(kaggle_zip(os.urandom(9 << 20))),
        400,
        "limit",
    ),
    (
        "mat that is not MATLAB 5",
        "post",
        "/api/datasets",
        lambda: dataset_zip(kaggle_zip(b"x" * 200)),
        400,
        "not a MATLAB 5",
    ),
    # 3. labels.csv
    (
        "labels.csv row bomb (32 MiB)",
        "post",
        "/api/datasets",
        lambda: dataset_zip(zip_bytes({"labels.csv": csv_row_bomb(32)})),
        400,
        f"{MAX_CSV_BYTES:,}-byte limit",
    ),
    (
        "labels.csv one row past the photo limit",
        "post",
        "/api/datasets",
        lambda: dataset_zip(
            zip_bytes({"labels.csv": b"image,x\n" + b"".join(b"%d.jpg,0\n" % i for i in range(MAX_PHOTOS + 1))})
        ),
        400,
        f"more than {MAX_PHOTOS:,} photos",
    ),
    (
        "CSV field over 128 KB",
        "post",
        "/api/datasets",
        lambda: dataset_zip(zip_bytes({"labels.csv": b"image,a\n" + b"x" * 200_000 + b",1\n"})),
        400,
        "not valid CSV",
    ),
    (
        "300-character image name",
        "post",
        "/api/datasets",
        lambda: dataset_zip(zip_bytes({"labels.csv": labels_csv([("n" * 300 + ".jpg", 1, 0)])})),
        400,
        "invalid image name",
    ),
    (
        "duplicate image rows",
        "post",
        "/api/datasets",
        lambda: dataset_zip(duplicate_rows()),
        400,
        "line 4 lists '1.jpg' again (first on line 2)",
    ),
    (
        "two labels.csv",
        "post",
        "/api/datasets",
        lambda: dataset_zip(zip_bytes({**good_members(prefix="a/"), "b/labels.csv": labels_csv([])})),
        400,
        "two labels files",
    ),
    (
        "a member twice",
        "post",
        "/api/datasets",
        lambda: dataset_zip(zip_bytes([*good_members().items(), ("labels.csv", labels_csv([]))])),
        400,
        "twice",
    ),
    (
        "label name with NUL",
        "post",
        "/api/datasets",
        lambda: dataset_zip(labelled(("image", "a\0", "b"))),
        400,
        "printable",
    ),
    (
        "label name with a newline",
        "post",
        "/api/datasets",
        lambda: dataset_zip(labelled(("image", "a\nb", "b"))),
        400,
        "printable",
    ),
    (
        "label name with a bidi override",
        "post",
        "/api/datasets",
        lambda: dataset_zip(labelled(("image", "a\u202eb", "b"))),
        400,
        "printable",
    ),
    # 4. decoded pixels per ZIP, from the headers, before any decoding
    (
        "26 PNGs of 40 megapixels",
        "post",
        "/api/datasets",
        lambda: dataset_zip(
            zip_bytes(
                {
                    "labels.csv": labels_csv([(f"{i}.png", i % 2, 1) for i in range(26)]),
                    **{f"{i}.png": png_claiming(6300, 6300) for i in range(26)},
                }
            )
        ),
        400,
        "pixels in all",
    ),
    # 10. ZIPs that gave a 500
    (
        "invalid UTF-8 name flagged UTF-8",
        "post",
        "/api/datasets",
        lambda: dataset_zip(utf8_flag_with_bad_name()),
        400,
        "not valid UTF-8",
    ),
    (
        "encrypted member",
        "post",
        "/api/datasets",
        lambda: dataset_zip(patched(zip_bytes(good_members()), "labels.csv", {6: b"\x01"}, {8: b"\x01"})),
        400,
        "encrypted",
    ),
    (
        "deflate64 member",
        "post",
        "/api/datasets",
        lambda: dataset_zip(patched(zip_bytes(good_members()), "labels.csv", {8: b"\x09"}, {10: b"\x09"})),
        400,
        "compression method 9",
    ),
    (
        "bad CRC in labels.csv",
        "post",
        "/api/datasets",
        lambda: dataset_zip(patched(zip_bytes(good_members()), "labels.csv", {14: b"bad!"}, {16: b"bad!"})),
        400,
        "damaged",
    ),
    # 10. requests that gave a 500
    ("similar= with a superscript digit", "post", "/api/predict?similar=%C2%B2", photo, 400, "whole number"),
    ("similar= with a circled digit", "post", "/api/predict?similar=%E2%91%A0", photo, 400, "whole number"),
    ("similar= with 5000 digits", "post", "/api/predict?similar=" + "9" * 5000, photo, 400, "whole number"),
    ("JSON nested 100k deep to /api/jobs", "post", "/api/jobs", lambda: nested(100_000), 400, "JSON"),
    ("JSON nested 100k deep to /api/models/active", "post", "/api/models/active", lambda: nested(100_000), 400, "JSON"),
    (
        "dataset given as an object",
        "post",
        "/api/jobs",
        lambda: {"json": {"dataset": {"a": 1}, "mode": "quick"}},
        404,
        "not a JSON dict",
    ),
    # 18. messages
    ("model id with a trailing newline", "post", "/api/predict?model=shipped%0A", photo, 404, "lowercase letters"),
    ("a 1 MB label is not echoed", "post", "/api/predict?gradcam=" + "x" * (1 << 20), photo, 400, "unknown label"),
    # 2. cross-site
    (
        "cross-site upload (Fetch Metadata)",
        "post",
        "/api/datasets",
        lambda: {**dataset_zip(zip_bytes(good_members())), "headers": {"Sec-Fetch-Site": "cross-site"}},
        403,
        "another site",
    ),
    (
        "same-site but other origin (Fetch Metadata)",
        "post",
        "/api/models/active",
        lambda: {"json": {"model": "shipped"}, "headers": {"Sec-Fetch-Site": "same-site"}},
        403,
        "another site",
    ),
    (
        "foreign Origin",
        "delete",
        "/api/models/x",
        lambda: {"headers": {"Origin": "http://127.0.0.1:9"}},
        403,
        "another site",
    ),
    (
        "form switch without a CSRF token",
        "post",
        "/models/use",
        lambda: {"data": {"model": "shipped"}},
        400,
        "did not come from this app",
    ),
]


@pytest.mark.parametrize("case, method, url, build, status, words", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(client, runs, case, method, url, build, status, words):
    kwargs = build()
    before = sorted(p.name for p in (runs / "datasets").iterdir())
    started = time.perf_counter()
    with PeakRSS() as rss:
        r = getattr(client, method)(url, **kwargs)
    took = time.perf_counter() - started
    message = r.get_json()["error"] if url.startswith("/api/") else r.get_data(as_text=True)
    assert r.status_code == status, message
    assert words in message and (len(message) < 2000 or not url.startswith("/api/")), message
    assert sorted(p.name for p in (runs / "datasets").iterdir()) == before  # nothing kept, nothing half-written
    assert rss.growth < MEMORY_CEILING and took < TIME_LIMIT_S, (rss.growth >> 20, took)
    print(f"\n{case}: {r.status_code}, +{rss.growth >> 20} MB RSS, {took:.2f} s")


@pytest.mark.parametrize(
    "case, members",
    [
        (
            "labels.csv with a UTF-8 BOM",
            lambda: {**good_members(), "labels.csv": b"\xef\xbb\xbf" + labels_csv([("1.jpg", 1, 0), ("2.jpg", 0, 1)])},
        ),
        (
            "the Kaggle layout",
            lambda: {"processed/miml data.mat": kaggle_mat(4), **{f"original/{i}.jpg": jpeg(i) for i in range(1, 5)}},
        ),
    ],
    ids=["bom", "kaggle"],
)
def test_good_uploads_are_accepted(client, case, members):
    r = client.post("/api/datasets", **dataset_zip(zip_bytes(members())))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["labels"] in (["a", "b"], ["desert", "sea"])


def test_skipped_photos_are_counted_and_the_first_100_listed(client, runs):
    r = client.post("/api/datasets", **dataset_zip(missing_photos(150)))
    info = r.get_json()
    assert r.status_code == 201 and info["photos"] == 1
    assert info["skipped_count"] == 150 and len(info["skipped"]) == MAX_SKIPPED
    assert info["skipped"][0] == {"image": "gone0.jpg", "error": "listed in the labels but not in the ZIP"}
    assert info["dataset"] in [d["dataset"] for d in client.get("/api/datasets").get_json()]


def test_a_photo_over_the_size_limit_is_left_out(client):
    padded = jpeg() + bytes(17 << 20)  # decodes, but 17 MB
    members = {"labels.csv": labels_csv([("1.jpg", 1, 0), ("2.jpg", 0, 1)]), "1.jpg": jpeg(), "2.jpg": padded}
    info = client.post("/api/datasets", **dataset_zip(zip_bytes(members))).get_json()
    assert info["photos"] == 1 and "byte limit for a photo" in info["skipped"][0]["error"]


def test_an_over_limit_zip_names_the_dataset_limit(app):
    app.config["MAX_DATASET_BYTES"] = 1 << 20
    try:
        r = app.test_client().post("/api/datasets", **dataset_zip(bytes(2 << 20)))
    finally:
        app.config["MAX_DATASET_BYTES"] = 200 << 20
    assert r.status_code == 413 and "at most 1 MB" in r.get_json()["error"]


def test_the_runs_quota_refuses_an_upload_before_writing(scenes_without_data, tmp_path):
    from app import create_app

    small = create_app(scenes=scenes_without_data, runs_dir=tmp_path / "runs", runs_quota_bytes=50_000)
    r = small.test_client().post("/api/datasets", **dataset_zip(zip_bytes(good_members(n=40))))
    assert r.status_code == 507 and "quota" in r.get_json()["error"]
    assert list((tmp_path / "runs" / "datasets").iterdir()) == []


@pytest.fixture(scope="module")
def scenes_without_data(app):
    return app.extensions["scenes"]


def test_one_import_at_a_time_at_the_lowest_priority(app, client):
    workspace = app.extensions["workspace"]  # every upload comes through it
    with workspace._importing:  # an import is running
        r = client.post("/api/datasets", **dataset_zip(zip_bytes(good_members())))
    assert r.status_code == 409 and "one import runs at a time" in r.get_json()["error"]
    niceness = workspace._importer.submit(lambda: os.getpriority(os.PRIO_PROCESS, 0)).result()
    assert niceness == 19 and os.getpriority(os.PRIO_PROCESS, 0) < 19


def test_label_decisions_refuse_cross_site_requests(app, client):
    """The labeller's routes that change state are under the app-wide refusal too; the app's own page passes."""
    dataset = client.post("/api/datasets", **dataset_zip(zip_bytes(good_members()))).get_json()["dataset"]
    url = f"/api/datasets/{dataset}/labels/1.jpg"
    history = app.extensions["workspace"].history(dataset, "1.jpg")
    for method, headers in [
        ("put", {"Sec-Fetch-Site": "cross-site"}),
        ("put", {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:9"}),
        ("delete", {"Origin": "http://evil.example"}),  # a browser without Fetch Metadata
    ]:
        r = getattr(client, method)(url, json={"labels": ["a", "b"]}, headers=headers)
        assert r.status_code == 403 and "another site" in r.get_json()["error"], (method, headers)
    assert app.extensions["workspace"].history(dataset, "1.jpg") == history
    r = client.put(url, json={"labels": ["a", "b"]}, headers={"Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200 and r.get_json()["labels"] == ["a", "b"]


def test_deleting_a_dataset(client, runs):
    dataset = client.post("/api/datasets", **dataset_zip(zip_bytes(good_members()))).get_json()["dataset"]
    page = client.get("/train").get_data(as_text=True)
    assert f'data-dataset="{dataset}"' in page
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    r = client.post("/datasets/delete", data={"dataset": dataset, "csrf_token": token})
    assert r.status_code == 400 and "tick the box" in r.get_data(as_text=True)
    r = client.post("/datasets/delete", data={"dataset": dataset, "csrf_token": token, "confirm": "yes"})
    assert r.status_code == 303 and not (runs / "datasets" / dataset).exists()
    other = client.post("/api/datasets", **dataset_zip(zip_bytes(good_members()))).get_json()["dataset"]
    assert client.delete(f"/api/datasets/{other}").get_json() == {"deleted": other}
    assert client.delete(f"/api/datasets/{other}").status_code == 404


def fake_model(runs, model_id, edit=None):
    """A registry model directory: the shipped model's files, optionally changed by `edit(folder)`."""
    folder = runs / "models" / model_id
    shutil.copytree(SHIPPED_MODEL_DIR, folder)
    if edit:
        edit(folder)
    return folder


def edit_json(name, change):
    def edit(folder):
        value = json.loads((folder / name).read_text())
        change(value)
        (folder / name).write_text(json.dumps(value))

    return edit


def test_a_failed_switch_is_not_saved(client, runs):
    fake_model(runs, "broken", lambda f: (f / "thresholds.json").write_text('{"labels": 5}'))
    r = client.post("/api/models/active", json={"model": "broken"})
    assert r.status_code == 409 and "cannot be used" in r.get_json()["error"]
    registry = client.application.extensions["registry"]
    assert registry.active() == "shipped"
    with registry.db.write() as con:  # chosen while its files were good
        con.execute("UPDATE settings SET value = 'broken' WHERE key = 'active_model'")
    assert registry.active() == "shipped"
    with registry.db.write() as con:
        con.execute("UPDATE settings SET value = 'shipped' WHERE key = 'active_model'")


def test_a_wrong_typed_metrics_file_is_shown_not_a_500(client, runs):
    fake_model(runs, "odd-metrics", edit_json("metrics.json", lambda m: m["test"].update(map="high")))
    assert client.get("/api/models").status_code == 200
    assert "odd-metrics" not in [m["id"] for m in client.get("/api/models").get_json()]
    page = client.get("/models")
    assert page.status_code == 200 and "test.map must be a number" in page.get_data(as_text=True)


def test_no_absolute_paths_on_the_model_page(client, runs):
    def quick(metrics):
        metrics["training"].update(mode="quick", backbone=str(SHIPPED_MODEL_DIR), head="logistic", C={}, minutes=1)

    fake_model(runs, "quick-like", edit_json("metrics.json", quick))
    assert client.post("/api/models/active", json={"model": "quick-like"}).status_code == 200
    try:
        page = client.get("/model").get_data(as_text=True)
    finally:
        client.post("/api/models/active", json={"model": "shipped"})
    assert "<code data-backbone>shipped</code> (frozen)" in page and str(SHIPPED_MODEL_DIR) not in page


def test_leftovers_of_killed_runs_are_removed_at_start(tmp_path):
    from workspace import Registry

    for leftover in ("models/a.partial-write", "models/b.training", "datasets/c.partial-write", "models/keep"):
        (tmp_path / leftover).mkdir(parents=True)
    Registry(tmp_path)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["keep"]
    assert list((tmp_path / "datasets").iterdir()) == []


def test_cancelling_right_after_start_is_quick(tmp_path):
    from workspace import Registry
    from workspace import Workspace

    registry = Registry(tmp_path)
    dataset = Workspace(tmp_path).create_dataset(io.BytesIO(zip_bytes(good_members())), "d.zip").dataset
    job = registry.start_job(dataset, "quick")
    started = time.perf_counter()
    status = registry.cancel_job(job)
    assert status.state == "cancelled" and time.perf_counter() - started < 3


def test_out_is_replaced_only_when_it_holds_a_model(tmp_path, tiny_dataset):
    from model.train import main

    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("not a model")
    with pytest.raises(SystemExit, match="is not a model directory .* never replaced, even with --force"):
        main(["--data", str(tiny_dataset), "--out", str(out), "--force", "--epochs", "1"])
    assert (out / "notes.txt").read_text() == "not a model" and (out / "sub").is_dir()


@pytest.mark.parametrize("tool", ["model.quick", "model.retune", "model.ensemble"])
def test_every_cli_with_out_follows_the_same_rule(tmp_path, tool):
    import subprocess
    import sys

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not a model")
    args = {
        "model.quick": [],
        "model.retune": ["--model", str(SHIPPED_MODEL_DIR), "--tta", "flip"],
        "model.ensemble": ["--members", "a", "b", "--tta", "flip"],
    }
    r = subprocess.run(
        [sys.executable, "-m", tool, "--out", str(out), "--force", *args[tool]], capture_output=True, text=True
    )
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith(
        f"error: {out}: exists and is not a model"
    )
    assert (out / "notes.txt").read_text() == "not a model"


def test_a_sparse_file_with_a_huge_png_chunk_is_refused_unread(tmp_path):
    from model.preprocess import ImageTooLargeError, load_image

    path = tmp_path / "sparse.png"
    with open(path, "wb") as f:
        f.write(png_claiming(64, 64)[:33] + struct.pack(">I", 3 << 30) + b"zTXt")  # a 3 GB chunk after IHDR
        f.truncate(3 << 30)  # sparse: nothing of it on disk
    with PeakRSS() as rss, pytest.raises(ImageTooLargeError, match="byte limit for a photo"):
        load_image(path, 224)
    assert rss.growth < 50 << 20


def test_a_stopped_atlas_ends_its_thread(tiny_dataset, tmp_path):
    from model.data import load_dataset
    from model.inference import Classifier

    atlas = Classifier().atlas(load_dataset(tiny_dataset), folder=tmp_path)
    atlas.stop()  # the model was switched away before it began
    atlas.start()
    with pytest.raises(RuntimeError, match="stopped: another model is in use"):
        atlas.wait(60)
    atlas._thread.join(10)
    assert not atlas._thread.is_alive()


def test_feedback_stores_a_bounded_photo(tmp_path):
    from PIL import Image

    from workspace.feedback import MAX_STORED_BYTES, Feedback

    feedback = Feedback(tmp_path)
    small, padded = jpeg(1), jpeg(2, size=(1600, 1200)) + bytes(9 << 20)  # decodes; 9 MB of padding
    name, created = feedback.save(padded, ["a"], ["a", "b"])
    stored = tmp_path / "original" / name
    assert created and stored.stat().st_size < MAX_STORED_BYTES
    assert Image.open(stored).size == (1024, 768)
    assert feedback.save(padded, ["b"], ["a", "b"]) == (name, False)  # the same upload: one row, updated
    small_name, _ = feedback.save(small, [], ["a", "b"])
    assert (tmp_path / "original" / small_name).read_bytes() == small  # small photos are kept as sent
    assert (tmp_path / "labels.csv").read_text() == f"image,a,b\n{name},0,1\n{small_name},0,0\n"
