"""Training your own labels through the API: dataset ZIPs (and the bad ones), quick-mode jobs, the model
registry, ?model=, switching, deleting and the loaded-model bound."""

import csv
import io
import re
import time

import numpy as np
import pytest
from PIL import Image

from model.inference import Classifier
from model.modeldir import read_model_dir
from tests.helpers import OWN_LABELS, dataset_zip, labels_csv, relabelled, zip_bytes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def app(runs, miml_data):
    from app import create_app
    from app.scenes import Scenes

    return create_app(scenes=Scenes(), runs_dir=runs)  # its own Scenes: switching models must not touch other tests'


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


def upload(client, data, name="photos.zip"):
    return client.post("/api/datasets", data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def csrf_token(client, page):
    """The CSRF token the page's forms carry (the client keeps the session cookie it belongs to)."""
    return client.get(page).get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]


def wait(client, job, timeout=180):
    started = time.time()
    while time.time() - started < timeout:
        status = client.get(f"/api/jobs/{job}").get_json()
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job} still {status} after {timeout} s")


@pytest.fixture(scope="module")
def own_dataset(client, miml_data):
    labels = relabelled(miml_data)
    r = upload(client, dataset_zip(miml_data, labels))
    assert r.status_code == 201, r.get_json()
    return r.get_json(), labels


@pytest.fixture(scope="module")
def quick_model(client, own_dataset):
    """The id of a model trained by a quick-mode job (benchmarks/train_modes.py times these jobs)."""
    r = client.post("/api/jobs", json={"dataset": own_dataset[0]["dataset"], "mode": "quick"})
    assert r.status_code == 202
    status = wait(client, r.get_json()["job"])
    assert status["state"] == "done", status
    return status["model"]


@pytest.mark.needs_data
def test_a_dataset_zip_is_imported(own_dataset, runs):
    info, labels = own_dataset
    assert info["photos"] == 120 and info["labels"] == OWN_LABELS and info["skipped"] == []
    folder = runs / "datasets" / info["dataset"]
    assert sorted(p.name for p in (folder / "original").iterdir()) == sorted(labels)
    rows = list(csv.reader(open(folder / "labels.csv")))
    assert rows[0] == ["image", *OWN_LABELS] and {r[0]: tuple(map(int, r[1:])) for r in rows[1:]} == labels


@pytest.mark.slow  # a quick-mode job trains
@pytest.mark.needs_data
def test_quick_mode_trains_through_the_api_and_predicts_our_labels(client, quick_model, own_dataset, runs, miml_data):
    model_id = quick_model
    listed = {m["id"]: m for m in client.get("/api/models").get_json()}
    assert set(listed) == {"shipped", model_id}
    mine = listed[model_id]
    assert mine["labels"] == OWN_LABELS and mine["dataset"] == own_dataset[0]["dataset"] and mine["mode"] == "quick"
    assert mine["architecture"] == "efficientnet-lite0 + efficientnet-lite1 (ensemble)"  # the shipped backbone
    assert mine["metrics"]["n_images"] == 24  # the split's test part
    assert mine["metrics"]["map"] > 0.8
    assert listed["shipped"]["labels"] == ["desert", "mountains", "sea", "sunset", "trees"]

    # An ordinary model directory: Classifier reproduces the stored test probabilities (the Dense head is the
    # logistic regression), and the thresholds came from validation.
    classifier = Classifier(runs / "models" / model_id, runtime="litert")  # float32, exact
    names, truth, stored = classifier.test_predictions()
    pixels = np.stack([classifier.load(miml_data / "original" / n) for n in names])
    np.testing.assert_allclose(classifier.probabilities(pixels), stored, atol=2e-4)
    assert "validation" in classifier.card.tuning.chosen_on
    # its backbone named by model id, whose converted graph it runs (no conversion of its own); its training
    # photos' embeddings kept for the familiarity flag
    training = classifier.card.training
    assert training.backbone == "shipped" and training.extra["backbone_sha256"] == Classifier().info.sha256
    assert type(classifier._forward).__name__ == "HeadRuntime"
    assert classifier.training_photos is not None and len(classifier.training_photos.train) == 76

    labels = own_dataset[1]
    sea = next(i for i, f in labels.items() if f == (1, 0, 0) and i in names)
    sunset = next(i for i, f in labels.items() if f == (0, 1, 0) and i in names)
    r = client.post(
        f"/api/predict?model={model_id}",
        content_type="multipart/form-data",
        data={
            "image": [
                (open(miml_data / "original" / sea, "rb"), sea),
                (open(miml_data / "original" / sunset, "rb"), sunset),
            ]
        },
    )
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert [sorted(x["probabilities"]) for x in results] == [sorted(OWN_LABELS)] * 2
    assert results[0]["predicted"] == ["water"] and results[1]["predicted"] == ["golden"]
    assert [x["familiarity"]["unfamiliar"] for x in results] == [False, False]
    assert set(r.get_json()["thresholds"]) == set(OWN_LABELS)
    default = client.post(
        "/api/predict",
        content_type="multipart/form-data",
        data={"image": (open(miml_data / "original" / sea, "rb"), sea)},
    ).get_json()
    assert "sea" in default["results"][0]["predicted"]  # without ?model= the model in use (shipped) answers


@pytest.mark.slow  # quick mode trains on the ImageNet backbone
@pytest.mark.needs_data
def test_quick_mode_on_the_imagenet_backbone(own_dataset, runs, miml_data):
    """For photos the shipped model may have been fine-tuned on (MIML's), quick mode can use ImageNet's weights."""
    from model.quick import train_quick

    out = runs / "imagenet-quick"
    card = train_quick(runs / "datasets" / own_dataset[0]["dataset"], out, runs / "embeddings", "imagenet")
    assert card.training.backbone.endswith("imagenet-efficientnet-lite0")
    assert (runs / "embeddings" / "imagenet-efficientnet-lite0" / "model.keras").is_file()  # written once, in runs/
    classifier = Classifier(out, runtime="openvino", precision="f32")
    names, truth, stored = classifier.test_predictions()
    pixels = np.stack([classifier.load(miml_data / "original" / n) for n in names])
    np.testing.assert_allclose(classifier.probabilities(pixels), stored, atol=2e-4)
    assert card.test["map"] > 0.7


@pytest.mark.needs_data
def test_a_second_job_is_refused_while_one_runs_and_cancelling_stops_it(client, own_dataset, runs):
    dataset = own_dataset[0]["dataset"]
    first = client.post("/api/jobs", json={"dataset": dataset, "mode": "quick"}).get_json()["job"]
    second = client.post("/api/jobs", json={"dataset": dataset, "mode": "quick"})
    assert second.status_code == 409 and first in second.get_json()["error"]
    process = client.application.extensions["registry"]._children[first]
    r = client.delete(f"/api/jobs/{first}")
    assert r.status_code == 200 and r.get_json()["state"] == "cancelled"
    assert not process.is_alive()
    assert client.get(f"/api/jobs/{first}").get_json()["state"] == "cancelled"
    assert not (runs / "models" / first).exists() and not list((runs / "models").glob(f"{first}*"))
    again = client.delete(f"/api/jobs/{first}")
    assert again.status_code == 409 and "already ended (cancelled)" in again.get_json()["error"]


@pytest.mark.needs_data
@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"dataset": "nope-000000", "mode": "quick"}, 404, "no dataset 'nope-000000'"),
        ({"dataset": "../etc", "mode": "quick"}, 404, "lowercase letters"),
        ({"mode": "quick"}, 400, "send 'dataset'"),
        ({"dataset": "x", "mode": "slow"}, 400, "mode must be one of quick, full"),
        ({"dataset": "x", "mode": "full", "epochs": "ten"}, 400, "epochs must be a whole number"),
        ({"dataset": "x", "mode": "full", "epochs": 0}, 400, "epochs must be a whole number"),
        ({"dataset": "x", "mode": "quick", "rate": 1}, 400, "unknown field 'rate'"),
        (
            {"dataset": "x", "mode": "quick", "backbone": "resnet"},
            400,
            "backbone is for quick mode: one of shipped, imagenet",
        ),
        ({"dataset": "x", "mode": "full", "backbone": "imagenet"}, 400, "backbone is for quick mode"),
    ],
)
def test_bad_job_requests_say_what_is_wrong(client, body, status, message):
    r = client.post("/api/jobs", json=body)
    assert r.status_code == status and message in r.get_json()["error"]


@pytest.mark.needs_data
def test_a_job_request_must_be_json(client):
    r = client.post("/api/jobs", data="dataset=x")
    assert r.status_code == 400 and "JSON" in r.get_json()["error"]
    assert client.get("/api/jobs/quick-none").status_code == 404


@pytest.mark.needs_data
def test_zip_slip_is_refused_and_nothing_is_written(client, runs, miml_data, tmp_path):
    before = sorted(p.name for p in (runs / "datasets").iterdir())
    labels = dict(list(relabelled(miml_data).items())[:3])
    for evil in ("../evil.jpg", "mine/../../evil.jpg", "/tmp/evil.jpg", "C:/evil.jpg", "a\\..\\evil.jpg"):
        r = upload(client, dataset_zip(miml_data, labels, extra={evil: b"x"}))
        assert r.status_code == 400, evil
        assert (
            "outside the dataset's folder" in r.get_json()["error"] and "nothing was extracted" in r.get_json()["error"]
        )
    assert sorted(p.name for p in (runs / "datasets").iterdir()) == before
    assert not list(runs.rglob("evil.jpg")) and not (runs.parent / "evil.jpg").exists()


@pytest.mark.needs_data
def test_a_zip_bomb_is_refused_before_it_inflates(client, runs, miml_data, monkeypatch):
    before = sorted(p.name for p in (runs / "datasets").iterdir())
    labels = dict(list(relabelled(miml_data).items())[:3])
    bomb = dataset_zip(miml_data, labels, extra={"mine/original/zeros.jpg": bytes(100 << 20)})
    assert len(bomb) < 1 << 20  # 100 MB of zeros in about 100 kB
    r = upload(client, bomb)
    assert r.status_code == 400 and "over the 67,108,864-byte limit for one file" in r.get_json()["error"]
    import model.datasets

    monkeypatch.setattr(model.datasets, "MAX_TOTAL_BYTES", 20_000)  # the total, over many small members
    r = upload(client, dataset_zip(miml_data, labels))
    assert r.status_code == 400 and "over the 20,000-byte limit" in r.get_json()["error"]
    monkeypatch.setattr(model.datasets, "MAX_MEMBERS", 3)
    r = upload(client, dataset_zip(miml_data, labels))
    assert r.status_code == 400 and "the ZIP has 4 members; at most 3" in r.get_json()["error"]
    assert sorted(p.name for p in (runs / "datasets").iterdir()) == before


@pytest.mark.needs_data
@pytest.mark.parametrize(
    "members, message",
    [
        ({"mine/original/1.jpg": b"x"}, "no labels.csv in the ZIP"),
        ({"labels.csv": b"name,sea\n1.jpg,1\n"}, "labels.csv: the header must be 'image,<label>,<label>,...'"),
        ({"labels.csv": b"image,sea,sea\n1.jpg,1,0\n"}, "labels.csv: label names must be unique"),
        (
            {"labels.csv": b"image,sea\n1.jpg,yes\n"},
            "labels.csv: line 2 must have an image name and 1 values of 0 or 1",
        ),
        ({"labels.csv": b"image,sea\n../1.jpg,1\n"}, "labels.csv: line 2 has an invalid image name"),
        ({"labels.csv": b"image,sea\n"}, "labels.csv: no photos listed"),
        ({"labels.csv": b"\xff\xfe\x00garbage"}, "labels.csv"),
    ],
)
def test_a_broken_labels_csv_is_a_400_that_says_what_is_wrong(client, members, message):
    r = upload(client, zip_bytes(members))
    assert r.status_code == 400 and message in r.get_json()["error"], r.get_json()


@pytest.mark.needs_data
def test_a_file_that_is_not_a_photo_is_left_out_and_named(client, miml_data, runs):
    labels = dict(list(relabelled(miml_data).items())[:4])
    labels["notes.jpg"] = (1, 0, 0)
    labels["missing.jpg"] = (0, 1, 0)
    labels["huge.png"] = (0, 0, 1)
    huge = io.BytesIO()
    Image.new("L", (8000, 6000)).save(huge, "PNG")  # 48 megapixels in 50 kB
    members = {
        "mine/labels.csv": labels_csv(labels),
        "mine/original/notes.jpg": b"this is a text file, not a photo",
        "mine/original/huge.png": huge.getvalue(),
        **{f"mine/original/{image}": (miml_data / "original" / image).read_bytes() for image in list(labels)[:4]},
    }
    r = upload(client, zip_bytes(members))
    info = r.get_json()
    assert r.status_code == 201 and info["photos"] == 4
    assert {s["image"]: s["error"] for s in info["skipped"]} == {
        "notes.jpg": "not an image format we can read (JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF, HEIC work)",
        "missing.jpg": "listed in the labels but not in the ZIP",
        "huge.png": "image has too many pixels (limit 40,000,000)",
    }
    folder = runs / "datasets" / info["dataset"]
    assert sorted(p.name for p in (folder / "original").iterdir()) == sorted(list(labels)[:4])
    assert len(list(csv.reader(open(folder / "labels.csv")))) == 5


@pytest.mark.needs_data
def test_photos_beside_labels_csv_and_not_a_zip(client, miml_data):
    labels = dict(list(relabelled(miml_data).items())[:3])
    members = {
        "labels.csv": labels_csv(labels),
        **{image: (miml_data / "original" / image).read_bytes() for image in labels},
    }
    r = upload(client, zip_bytes(members), "My Photos.zip")
    assert r.status_code == 201 and r.get_json()["photos"] == 3 and r.get_json()["dataset"].startswith("my-photos-")
    r = upload(client, b"PK\x03\x04 not really")
    assert r.status_code == 400 and "not a ZIP archive" in r.get_json()["error"]
    r = client.post("/api/datasets", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and "field 'file'" in r.get_json()["error"]


@pytest.mark.slow  # needs the quick-mode model
@pytest.mark.needs_data
def test_pages_list_datasets_and_models(client, quick_model, own_dataset):
    html = client.get("/train").get_data(as_text=True)
    assert own_dataset[0]["dataset"] in html and "water, golden, green" in html and 'src="/static/train.js"' in html
    html = client.get("/models").get_data(as_text=True)
    assert f'data-model="{quick_model}"' in html and 'data-model="shipped"' in html and ">in use<" in html
    assert 'href="/train"' in html and 'href="/models"' in html  # the nav links


@pytest.mark.slow  # needs the quick-mode model
@pytest.mark.needs_data
def test_compare_shows_metrics_side_by_side_and_the_disagreements(client, quick_model, runs, miml_data):
    import json
    import shutil
    from model.metrics import evaluate
    from model.thresholds import apply_thresholds

    model_id = quick_model
    strict = runs / "models" / "strict-copy"  # the same model with other thresholds: same labels, same test photos
    shutil.copytree(runs / "models" / model_id, strict)
    info = json.loads((strict / "thresholds.json").read_text())
    info["thresholds"] = {label: 0.8 for label in info["thresholds"]}
    (strict / "thresholds.json").write_text(json.dumps(info))

    r = client.get(f"/compare?a={model_id}&b=strict-copy")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    names, truth, probs = read_model_dir(runs / "models" / model_id).test_predictions()
    ours = json.loads((runs / "models" / model_id / "thresholds.json").read_text())
    decided = [apply_thresholds(probs, [t[l] for l in OWN_LABELS]) for t in (ours["thresholds"], info["thresholds"])]
    differ = [n for n, a, b in zip(names, *decided) if (a != b).any()]
    assert differ and f"They disagree on {len(differ)} of them" in html and f"the {len(names)} test photos" in html
    assert re.findall(r'data-photo="([^"]+)"', html) == differ
    strict_hamming = evaluate(truth, probs, [0.8] * 3, OWN_LABELS)["hamming_loss"]
    row = next(line for line in html.split("<tr") if 'data-metric="hamming_loss"' in line)
    assert f"{quick_model_hamming(runs, model_id):.4f}" in row and f"{strict_hamming:.4f}" in row
    thumb = client.get(f"/compare/thumb/{model_id}/{differ[0]}")
    assert thumb.status_code == 200 and thumb.data[:2] == b"\xff\xd8"
    assert client.get(f"/compare/thumb/{model_id}/1999.jpg").status_code in (200, 404)
    assert client.get(f"/compare/thumb/{model_id}/..%2Fsecret.jpg").status_code == 404

    r = client.get(f"/compare?a={model_id}&b=shipped")
    assert r.status_code == 400 and "different labels" in r.get_data(as_text=True)
    assert client.get("/compare?a=shipped").status_code == 400
    assert client.get("/compare?a=shipped&b=nothing-here").status_code == 404
    shutil.rmtree(strict)


def quick_model_hamming(runs, model_id):
    import json

    return json.loads((runs / "models" / model_id / "metrics.json").read_text())["test"]["hamming_loss"]


@pytest.mark.slow  # needs the quick-mode model
@pytest.mark.needs_data
def test_models_switch_survives_a_restart_and_deleting_asks_or_refuses(client, quick_model, runs, app):
    model_id = quick_model
    assert client.delete("/api/models/shipped").status_code == 403
    assert client.delete("/api/models/shipped").get_json()["error"] == "the shipped model cannot be deleted"
    assert client.delete("/api/models/nothing-here").status_code == 404
    r = client.post("/api/predict?model=nothing-here", content_type="multipart/form-data", data={})
    assert r.status_code == 404 and "no model 'nothing-here'" in r.get_json()["error"]

    assert client.post("/api/models/active", json={"model": model_id}).status_code == 200
    assert app.extensions["scenes"].labels == OWN_LABELS
    page = client.get("/model").get_data(as_text=True)  # the pages read the quick model's directory unchanged
    assert "quick mode: logistic regression per label on the frozen pooled embedding" in page
    assert client.get("/evaluation").status_code == 200 and "labels: water, golden, green" in page
    assert [m["id"] for m in client.get("/api/models").get_json() if m["active"]] == [model_id]
    r = client.delete(f"/api/models/{model_id}")
    assert r.status_code == 409 and "switch to another model" in r.get_json()["error"]

    from app import create_app

    restarted = create_app(runs_dir=runs).test_client()  # a new server on the same runs folder
    assert restarted.get("/api/model").get_json()["labels"] == OWN_LABELS
    from model.modeldir import SHIPPED_MODEL_DIR

    given = create_app(model_dir=SHIPPED_MODEL_DIR, runs_dir=runs).test_client()  # --model wins over the choice
    assert given.get("/api/model").get_json()["labels"] == ["desert", "mountains", "sea", "sunset", "trees"]
    assert not any(m["active"] for m in given.get("/api/models").get_json())
    assert "given with <code>--model</code>" in given.get("/models").get_data(as_text=True)

    r = client.post("/models/delete", data={"model": model_id, "confirm": "yes"})
    assert r.status_code == 400 and "did not come from this app" in r.get_data(as_text=True)  # no CSRF token
    token = csrf_token(client, "/models")
    r = client.post("/models/delete", data={"model": model_id, "csrf_token": token})
    assert r.status_code == 400 and "tick the box" in r.get_data(as_text=True)
    assert client.post("/api/models/active", json={"model": "shipped"}).status_code == 200
    assert (
        client.post("/models/delete", data={"model": model_id, "confirm": "yes", "csrf_token": token}).status_code
        == 303
    )
    assert not (runs / "models" / model_id).exists()
    assert [m["id"] for m in client.get("/api/models").get_json()] == ["shipped"]


def test_loaded_models_keep_the_three_most_recently_used(monkeypatch):
    import app.training

    loads = []
    monkeypatch.setattr(app.training, "Classifier", lambda path, **kw: loads.append(path) or object())

    class Paths:
        def check_model(self, model_id):
            return f"/models/{model_id}"

    models = app.training.LoadedModels(Paths(), ("litert", "f32"), 1)
    for model_id in ["a", "b", "c", "a", "d", "a", "b"]:
        models.get(model_id)
    assert loads == ["/models/a", "/models/b", "/models/c", "/models/d", "/models/b"]
    assert models.ids() == ["d", "a", "b"]


def test_the_feedback_folder_is_a_dataset_once_it_holds_photos(tmp_path, tiny_dataset):
    import shutil
    from workspace import Registry

    (tmp_path / "empty").mkdir()
    registry = Registry(tmp_path / "runs", data_dir=tiny_dataset, feedback_dir=tmp_path / "empty")
    assert [d["dataset"] for d in registry.datasets()] == ["data"]  # nothing corrected yet: not listed
    shutil.copytree(tiny_dataset, tmp_path / "corrected")
    registry = Registry(tmp_path / "runs", feedback_dir=tmp_path / "corrected")
    (listed,) = registry.datasets()
    assert listed["dataset"] == "feedback" and listed["photos"] == 36 and listed["name"] == "--feedback corrected"
    assert registry.dataset_path("feedback") == tmp_path / "corrected"
