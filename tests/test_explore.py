"""Exploring the model: similar photos (/api/predict?similar=K, cards), the embedding map (/api/map, /map),
the atlas cache, and label feedback (/api/feedback), on 61 MIML photos copied into a small dataset."""

import csv
import io
import json
import os
import re
import shutil
import time

import numpy as np
import pytest

from workspace import Feedback
from model.atlas import dataset_key
from model.data import load_dataset, split
from tests.helpers import SHOTS, free_port, get, serve, start

LABELS = ["desert", "mountains", "sea", "sunset", "trees"]


@pytest.fixture(scope="module")
def small_data(miml_data, tmp_path_factory):
    """Every 33rd MIML photo (61 of them) with its labels.csv row."""
    root = tmp_path_factory.mktemp("small") / "miml"
    (root / "original").mkdir(parents=True)
    with open(miml_data / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(rows[0])
        for row in rows[1::33]:
            shutil.copy(miml_data / "original" / row[0], root / "original" / row[0])
            writer.writerow(row)
    return root


@pytest.fixture(scope="module")
def explore_scenes(small_data, tmp_path_factory):
    from app.scenes import Scenes

    scenes = Scenes(data_dir=small_data)
    scenes.atlas = scenes.classifier.atlas(scenes.dataset, tmp_path_factory.mktemp("atlas")).start().wait(300)
    return scenes


@pytest.fixture()
def explore_client(explore_scenes):
    from app import create_app

    return create_app(scenes=explore_scenes).test_client()


@pytest.fixture(scope="module")
def reference(explore_scenes):
    """Embeddings and probabilities of the small dataset's photos, computed here without the atlas."""
    c, d = explore_scenes.classifier, explore_scenes.dataset
    images = d.load_photos(range(len(d.images)), c.size)
    return c.embeddings(images), c.probabilities(images)


@pytest.fixture()
def feedback_dir(explore_scenes, tmp_path, monkeypatch):
    monkeypatch.setattr(explore_scenes, "feedback", Feedback(tmp_path / "feedback"))
    return tmp_path / "feedback"


def post(client, url, data, name="photo.jpg", **fields):
    return client.post(url, data={"image": (io.BytesIO(data), name), **fields}, content_type="multipart/form-data")


def true_labels(dataset, i):
    return [l for l, on in zip(dataset.label_names, dataset.labels[i]) if on]


# --- similar photos ---------------------------------------------------------------------------------


@pytest.mark.needs_data
def test_similar_photos_are_the_exact_cosine_neighbours(explore_client, explore_scenes, reference):
    d = explore_scenes.dataset
    photo = 17  # 0-based
    r = post(explore_client, "/api/predict?similar=5", d.path(photo).read_bytes())
    assert r.status_code == 200
    result = r.get_json()["results"][0]
    similar = result["similar"]
    assert [set(s) for s in similar] == [{"photo_id", "image", "split", "labels", "similarity"}] * 5
    assert similar[0]["photo_id"] == photo + 1 and similar[0]["similarity"] >= 0.999
    embeddings, probs = reference
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = unit @ unit[photo]
    expected = np.argsort(-cosine)[:5]
    assert [s["photo_id"] for s in similar] == [int(i) + 1 for i in expected]
    assert [s["similarity"] for s in similar] == pytest.approx(cosine[expected], abs=1e-3)
    names = dict(zip(("train", "validation", "test"), split(len(d.images), 100)))
    for s in similar:
        i = s["photo_id"] - 1
        assert s["image"] == d.images[i] and s["labels"] == true_labels(d, i)
        assert i in names[s["split"]]
    assert result["predicted"] == explore_scenes.classifier.results(probs[photo])[0]["predicted"]


@pytest.mark.needs_data
@pytest.mark.parametrize("value", ["0", "51", "abc", "-1", "", "2.5"])
def test_similar_out_of_range_is_400(explore_client, explore_scenes, value):
    r = post(explore_client, f"/api/predict?similar={value}", explore_scenes.dataset.path(0).read_bytes())
    assert r.status_code == 400
    assert r.get_json()["error"].startswith("similar must be a whole number from 1 to 50")


@pytest.mark.needs_data
def test_similar_50_and_with_gradcam(explore_client, explore_scenes):
    r = post(explore_client, "/api/predict?similar=50&gradcam=sea", explore_scenes.dataset.path(3).read_bytes())
    result = r.get_json()["results"][0]
    assert len(result["similar"]) == 50 and result["gradcam"]["label"] == "sea"
    sims = [s["similarity"] for s in result["similar"]]
    assert sims == sorted(sims, reverse=True) and len({s["photo_id"] for s in result["similar"]}) == 50


@pytest.mark.needs_data
def test_similar_and_map_answer_503_with_progress_until_ready(explore_client, explore_scenes, monkeypatch, tmp_path):
    not_started = explore_scenes.classifier.atlas(explore_scenes.dataset, tmp_path)
    monkeypatch.setattr(explore_scenes, "atlas", not_started)
    photo = explore_scenes.dataset.path(0).read_bytes()
    r = post(explore_client, "/api/predict?similar=3", photo)
    assert r.status_code == 503 and r.get_json() == {"error": "computing similar photos: 0%", "progress": 0.0}
    not_started.progress = 0.4
    assert explore_client.get("/api/map").get_json() == {"error": "computing similar photos: 40%", "progress": 0.4}
    html = post(explore_client, "/", photo).get_data(as_text=True)
    assert "computing similar photos: 40%" in html
    assert post(explore_client, "/api/predict", photo).status_code == 200  # plain predictions never wait


@pytest.mark.needs_data
def test_similar_and_map_without_a_dataset_are_404(client_without_data, sea_photo):
    r = post(client_without_data, "/api/predict?similar=3", sea_photo)
    assert r.status_code == 404 and "start the app with --data DIR" in r.get_json()["error"]
    assert client_without_data.get("/api/map").status_code == 404
    response = client_without_data.get("/map")
    assert response.status_code == 200 and "No dataset is loaded" in response.get_data(as_text=True)


def similar_links(html):
    section = re.search(r'<section class="similar" data-similar>(.*?)</section>', html, re.S).group(1)
    return [int(n) for n in re.findall(r'href="/photo/(\d+)"', section)]


@pytest.mark.needs_data
def test_cards_show_the_closest_photos(explore_client, explore_scenes):
    d = explore_scenes.dataset
    atlas = explore_scenes.atlas
    own = atlas.similar(atlas.unit[9], 7)
    upload = post(explore_client, "/", d.path(9).read_bytes()).get_data(as_text=True)
    assert similar_links(upload) == [s["photo_id"] for s in own[:6]] and similar_links(upload)[0] == 10
    detail = explore_client.get("/photo/10").get_data(as_text=True)
    assert similar_links(detail) == [s["photo_id"] for s in own[1:7]]  # the photo itself left out
    assert "Correct the labels" not in upload  # feedback is off


# --- the map ----------------------------------------------------------------------------------------


@pytest.mark.needs_data
def test_map_points(explore_client, explore_scenes, reference):
    d = explore_scenes.dataset
    points = explore_client.get("/api/map").get_json()["points"]
    assert [p["photo_id"] for p in points] == list(range(1, len(d.images) + 1))
    assert all(set(p) == {"photo_id", "x", "y", "split", "truth", "predicted"} for p in points)
    xy = np.array([[p["x"], p["y"]] for p in points])
    assert (
        xy.min() == pytest.approx(0, abs=1e-4)
        and xy.max() == pytest.approx(1, abs=1e-4)
        and len(np.unique(xy, axis=0)) > 55
    )
    assert [p["truth"] for p in points] == [true_labels(d, i) for i in range(len(d.images))]
    _, probs = reference
    assert [p["predicted"] for p in points] == [r["predicted"] for r in explore_scenes.classifier.results(probs)]
    train, val, test = split(len(d.images), 100)
    assert [sum(p["split"] == s for p in points) for s in ("train", "validation", "test")] == [
        len(train),
        len(val),
        len(test),
    ]


# --- the cache ----------------------------------------------------------------------------------------


@pytest.mark.needs_data
def test_second_start_reads_the_cache_and_runs_no_photo(explore_scenes, monkeypatch):
    first = explore_scenes.atlas
    assert first.path.exists() and not first.from_cache
    c = explore_scenes.classifier
    monkeypatch.setattr(c, "forward", lambda images: pytest.fail("the model ran on the dataset again"))
    second = c.atlas(explore_scenes.dataset, first.folder).start()
    assert second.status()["ready"] and second._thread is None  # read in start(), no background thread
    assert second.from_cache and second.path == first.path
    assert second.points() == first.points()


@pytest.mark.slow  # computes the 61 photos' atlas again
@pytest.mark.needs_data
def test_a_damaged_cache_is_computed_again(explore_scenes, tmp_path):
    first = explore_scenes.atlas
    (tmp_path / first.path.name).write_bytes(first.path.read_bytes()[:5000])  # a cut-off file
    again = explore_scenes.classifier.atlas(explore_scenes.dataset, tmp_path).start()
    assert not again.wait(300).from_cache
    assert np.abs(again.unit - first.unit).max() < 1e-5 and np.abs(again.xy - first.xy).max() < 1e-3
    with np.load(tmp_path / first.path.name) as npz:  # rewritten whole
        assert np.array_equal(npz["xy"], again.xy) and np.array_equal(npz["probabilities"], again.probabilities)


@pytest.mark.needs_data
def test_cache_key_follows_the_model_and_the_listing(explore_scenes, small_data, tmp_path):
    d = explore_scenes.dataset
    key = dataset_key("a" * 64, d)
    assert key == dataset_key("a" * 64, load_dataset(small_data))
    assert key != dataset_key("b" * 64, d)
    copy = tmp_path / "copy"
    shutil.copytree(small_data, copy)
    (copy / "original" / d.images[0]).write_bytes(b"x" + (copy / "original" / d.images[0]).read_bytes())
    assert key != dataset_key("a" * 64, load_dataset(copy))


# --- feedback ---------------------------------------------------------------------------------------


def rows(folder):
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.reader(f))


@pytest.mark.needs_data
def test_feedback_saves_the_photo_and_one_row_per_photo(explore_client, explore_scenes, feedback_dir):
    import hashlib

    d = explore_scenes.dataset
    photo, other = d.path(0).read_bytes(), d.path(1).read_bytes()
    name = hashlib.sha256(photo).hexdigest()[:16] + ".jpg"
    r = post(explore_client, "/api/feedback", photo, labels="trees, sea")
    assert r.status_code == 201 and r.get_json() == {"image": name, "labels": ["sea", "trees"], "created": True}
    assert (feedback_dir / "original" / name).read_bytes() == photo
    assert rows(feedback_dir) == [["image", *LABELS], [name, "0", "0", "1", "0", "1"]]
    r = post(explore_client, "/api/feedback", photo, "again.jpg", labels="")
    assert r.status_code == 200 and r.get_json()["created"] is False
    assert post(explore_client, "/api/feedback", other, labels="desert").status_code == 201
    assert rows(feedback_dir)[1] == [name, "0", "0", "0", "0", "0"] and len(rows(feedback_dir)) == 3
    dataset = load_dataset(feedback_dir)  # what model.train --data reads
    assert dataset.images[0] == name and dataset.labels.tolist() == [[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert sorted(p.name for p in (feedback_dir / "original").iterdir()) == sorted(dataset.images)


@pytest.mark.needs_data
@pytest.mark.parametrize(
    "fields, data, status, words",
    [
        ({"labels": "sea,volcano"}, None, 400, "unknown label 'volcano'; labels are desert, mountains"),
        ({}, None, 400, "send the true labels in the form field 'labels'"),
        ({"labels": "sea"}, b"just some text", 415, "photo.jpg: not an image format"),
        ({"labels": "sea"}, b"", 400, "photo.jpg: the file is empty"),
    ],
)
def test_feedback_bad_requests(explore_client, explore_scenes, feedback_dir, fields, data, status, words):
    data = explore_scenes.dataset.path(0).read_bytes() if data is None else data
    r = post(explore_client, "/api/feedback", data, **fields)
    assert r.status_code == status and words in r.get_json()["error"]
    assert not (feedback_dir / "labels.csv").exists() and not any((feedback_dir / "original").iterdir())


@pytest.mark.needs_data
def test_feedback_takes_one_photo(explore_client, explore_scenes, feedback_dir):
    d = explore_scenes.dataset
    files = [(io.BytesIO(d.path(i).read_bytes()), f"{i}.jpg") for i in (0, 1)]
    r = explore_client.post("/api/feedback", data={"image": files, "labels": "sea"}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"] == "send one photo for feedback, not 2"
    assert not (feedback_dir / "labels.csv").exists()


@pytest.mark.needs_data
def test_the_readme_merge_gives_one_dataset_of_both(explore_client, explore_scenes, feedback_dir, small_data, tmp_path):
    """docs/training.md's steps (hard links, labels.csv rows appended) give a dataset model.train reads."""
    post(explore_client, "/api/feedback", explore_scenes.dataset.path(2).read_bytes(), labels="sunset")
    merged = tmp_path / "merged"
    (merged / "original").mkdir(parents=True)
    for photo in [*(small_data / "original").iterdir(), *(feedback_dir / "original").iterdir()]:
        os.link(photo, merged / "original" / photo.name)
    lines = (small_data / "labels.csv").read_text().splitlines() + (
        feedback_dir / "labels.csv"
    ).read_text().splitlines()[1:]
    (merged / "labels.csv").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(merged)
    assert len(dataset.images) == 62 and dataset.labels[-1].tolist() == [0, 0, 0, 1, 0]


@pytest.mark.needs_data
def test_feedback_folder_of_other_labels_is_a_409_not_a_wrong_row(
    explore_client, explore_scenes, tmp_path, monkeypatch
):
    """A folder started under another model's labels (a switch, then a restart): the app starts, and feedback
    is refused with the reason instead of being written under the folder's header."""
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "labels.csv").write_text("image,water,golden,green\nold.jpg,1,0,0\n")
    monkeypatch.setattr(explore_scenes, "feedback", Feedback(folder))  # what Scenes(feedback_dir=...) builds
    photo = explore_scenes.dataset.path(0).read_bytes()
    r = post(explore_client, "/api/feedback", photo, labels="sea")
    assert r.status_code == 409
    assert "collects the labels water, golden, green" in r.get_json()["error"]
    assert "desert, mountains, sea, sunset, trees" in r.get_json()["error"]
    assert (folder / "labels.csv").read_text() == "image,water,golden,green\nold.jpg,1,0,0\n"
    assert list((folder / "original").iterdir()) == []


@pytest.mark.needs_data
def test_feedback_without_the_option_is_404(client, sea_photo):
    r = post(client, "/api/feedback", sea_photo, labels="sea")
    assert r.status_code == 404 and "start the app with --feedback DIR" in r.get_json()["error"]


# --- in the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explore_url(explore_scenes):
    from app import create_app

    yield from serve(create_app(scenes=explore_scenes))


@pytest.mark.browser
@pytest.mark.needs_data
def test_map_hover_shows_the_thumbnail_and_click_opens_the_photo(page, explore_url, explore_scenes):
    page.goto(explore_url + "/map")
    page.locator("canvas[data-ready]").wait_for(timeout=30000)
    canvas = page.locator("canvas[data-map]")  # its draw time (data-draw-ms) is benchmarks/explore.py's
    point = explore_scenes.atlas.points()[20]
    box = canvas.bounding_box()
    pad = 12  # PAD in map.js
    x = box["x"] + pad + point["x"] * (box["width"] - 2 * pad)
    y = box["y"] + pad + point["y"] * (box["height"] - 2 * pad)
    page.mouse.move(x, y)
    tip = page.locator("[data-map-tip]")
    tip.wait_for(state="visible")
    assert tip.locator("p").inner_text().startswith(f"#{point['photo_id']} · {point['split']}")
    page.wait_for_function("img => img.complete && img.naturalWidth === 176", arg=tip.locator("img").element_handle())
    assert tip.locator("img").get_attribute("src").endswith(f"/photo/{point['photo_id']}/thumb.jpg")
    page.screenshot(path=str(SHOTS / "map-hover.png"), full_page=True)
    points = explore_scenes.atlas.points()
    sets = [" + ".join(p["truth"]) or "no label" for p in points]
    common = max(set(sets), key=sets.count)  # the first entry of the legend
    first = page.locator("[data-map-legend] li").first
    assert first.inner_text() == f"{common} ({sets.count(common)})"
    page.check("input[value=predicted]")
    predicted = sum((" + ".join(p["predicted"]) or "no label") == common for p in points)
    assert first.inner_text() == f"{common} ({predicted})"
    errors = sum(p["split"] == "test" and p["truth"] != p["predicted"] for p in points)
    assert page.locator("[data-map-legend] li").last.inner_text() == f"test photo predicted wrongly ({errors})"
    page.screenshot(path=str(SHOTS / "map-predicted.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function("c => c.getBoundingClientRect().width < 390", arg=canvas.element_handle())
    page.screenshot(path=str(SHOTS / "map-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.wait_for_function("c => c.getBoundingClientRect().width > 700", arg=canvas.element_handle())
    page.mouse.click(x, y)
    page.wait_for_url(f"**/photo/{point['photo_id']}")
    assert page.locator("[data-similar] li").count() == 6
    page.screenshot(path=str(SHOTS / "photo-similar.png"), full_page=True)


@pytest.mark.slow  # starts the app twice; the first computes the 61 photos' atlas
@pytest.mark.needs_data
def test_a_second_start_of_the_app_reads_the_cache(small_data, tmp_path):
    """visualization.py computes the atlas in the background (the first /api/map answers 503 with progress);
    started again on the same model and dataset, its first /api/map already answers the map."""
    from model.cache import cache_dir

    for part in ("openvino", "litert", "facts"):  # the compiled model, converted once already: only the atlas is new
        (cache_dir() / part).mkdir(parents=True, exist_ok=True)
        (tmp_path / part).symlink_to(cache_dir() / part)
    env = {**os.environ, "MIML_CACHE": str(tmp_path)}
    first_answers = []
    for _ in range(2):
        port = free_port()
        proc = start("--port", str(port), "--data", str(small_data), env=env)
        try:
            assert proc.stdout.readline().startswith("MIML Scenes ready at")
            status, _, body = get(port, "/api/map")
            first_answers.append((status, json.loads(body)))
            deadline = time.time() + 120
            while status == 503 and time.time() < deadline:
                time.sleep(0.2)
                status, _, body = get(port, "/api/map")
            assert status == 200 and len(json.loads(body)["points"]) == 61
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    (status, body), (again, points) = first_answers
    assert status == 503 and body["error"].startswith("computing similar photos: ") and 0 <= body["progress"] < 1
    assert again == 200 and len(points["points"]) == 61
    assert len(list((tmp_path / "atlas").glob("*.npz"))) == 1


@pytest.mark.browser
@pytest.mark.needs_data
def test_feedback_flow_in_the_browser(page, explore_url, explore_scenes, feedback_dir, tmp_path):
    photo = tmp_path / "beach.jpg"
    photo.write_bytes(explore_scenes.dataset.path(5).read_bytes())
    page.goto(explore_url + "/")
    page.set_input_files("input[type=file]", str(photo))
    card = page.locator("[data-card]")
    card.wait_for(timeout=30000)
    card.locator("summary", has_text="Correct the labels").click()
    for label in LABELS:
        card.locator(f"input[name=labels][value={label}]").set_checked(label in ("sea", "sunset"))
    card.locator("[data-feedback] button").click()
    status = card.locator("[data-feedback-status]")
    page.wait_for_function("e => e.textContent.startsWith('Saved as')", arg=status.element_handle())
    assert status.inner_text().endswith(": sea, sunset")
    assert rows(feedback_dir)[1][1:] == ["0", "0", "1", "1", "0"]
    assert "uploads are stored only when you save their true labels" in page.locator("footer").inner_text()
    page.screenshot(path=str(SHOTS / "feedback.png"), full_page=True)


@pytest.mark.browser
@pytest.mark.needs_data
def test_map_page_shows_the_progress_then_draws(browser, explore_url, explore_scenes, monkeypatch, tmp_path):
    """Chromium logs each 503 the page polls as a console error, so only script errors count here."""
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    ready = explore_scenes.atlas
    computing = explore_scenes.classifier.atlas(explore_scenes.dataset, tmp_path)  # not started: stays at 40%
    computing.progress = 0.4
    monkeypatch.setattr(explore_scenes, "atlas", computing)
    tab.goto(explore_url + "/map")
    status = tab.locator("[data-map-status]")
    tab.wait_for_function("e => e.textContent === 'computing similar photos: 40%'", arg=status.element_handle())
    assert tab.locator("[data-map-progress]").evaluate("e => e.value") == pytest.approx(0.4)
    tab.screenshot(path=str(SHOTS / "map-computing.png"))
    monkeypatch.setattr(explore_scenes, "atlas", ready)  # the page polls every second
    tab.locator("canvas[data-ready]").wait_for(timeout=10000)
    assert status.inner_text() == f"{len(explore_scenes.dataset.images)} photos"
    tab.close()
    assert not errors
