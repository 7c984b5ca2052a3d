"""The training pages in headless Chromium: upload a dataset, watch the progress bar, switch models, compare.
Screenshots go to artifacts/screenshots/."""

import json
import shutil

import pytest

from tests.helpers import OWN_LABELS, SHOTS, dataset_zip, relabelled, serve

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def base_url(runs):
    from app import create_app
    from app.scenes import Scenes

    yield from serve(create_app(scenes=Scenes(), runs_dir=runs))


@pytest.mark.needs_data
@pytest.mark.slow  # a quick-mode job trains on 120 MIML photos
def test_upload_train_switch_and_compare(page, base_url, runs, miml_data, tmp_path):
    archive = tmp_path / "my labels.zip"
    archive.write_bytes(dataset_zip(miml_data, relabelled(miml_data)))
    page.goto(base_url + "/train")
    page.set_input_files("[data-upload] input[type=file]", str(archive))
    page.click("[data-upload] button[type=submit]")
    status = page.locator("[data-upload-status]")
    status.filter(has_text="120 photos").wait_for(timeout=60000)
    assert "labels water, golden, green" in status.inner_text()
    dataset = status.inner_text().split()[1].rstrip(":")
    assert page.locator("[data-datasets]").input_value() == dataset

    page.click("[data-train] button[type=submit]")
    bar = page.locator("[data-job-bar]")
    page.wait_for_function("() => document.querySelector('[data-job-bar]').value > 0.04", timeout=60000)
    seen = {float(bar.get_attribute("value") or bar.evaluate("e => e.value"))}
    page.screenshot(path=str(SHOTS / "train-progress.png"), full_page=True)
    messages = set()
    while page.locator("[data-job]").get_attribute("data-state") in ("queued", "running", "loading"):
        seen.add(bar.evaluate("e => e.value"))
        messages.add(page.locator("[data-job-text]").inner_text())
        page.wait_for_timeout(300)
    assert page.locator("[data-job]").get_attribute("data-state") == "done", page.locator(
        "[data-job-text]"
    ).inner_text()
    assert len({v for v in seen if 0 < v < 1}) >= 2  # the bar moved while it ran
    assert any("step 3 of 4: fitting the logistic head" in m for m in messages)  # each step says which it is
    assert not any("LiteRT conversion" in m for m in messages)  # none: the backbone's flatbuffer is reused
    assert bar.evaluate("e => e.value") == 1 and page.locator("[data-job-cancel]").is_hidden()
    model = page.locator("[data-job-model]").inner_text()
    page.screenshot(path=str(SHOTS / "train-done.png"), full_page=True)

    page.click("[data-job-done] a")
    row = page.locator(f"tr[data-model='{model}']")
    assert row.locator("td").nth(2).inner_text() == dataset  # the model's dataset, by id
    assert page.locator("tr[data-model='shipped'] td").nth(2).inner_text() == "miml"  # not "."
    assert page.locator("[data-no-pairs]").is_visible()  # different labels: nothing to compare yet
    row.locator("[data-use]").click()
    page.locator(f"tr[data-model='{model}'] .chip", has_text="in use").wait_for()
    assert "labels: water, golden, green" in page.locator("footer").inner_text()
    assert page.locator("tr[data-model='shipped'] [data-delete]").count() == 0  # never offered

    page.goto(base_url + "/model")  # the trained model's own facts
    trained_on = page.locator("[data-trained-on]").inner_text()
    assert f"dataset {dataset} (120 photos)" in trained_on and "76 training" in trained_on
    assert "original project" not in trained_on and "miml" not in trained_on
    assert page.locator("[data-backbone]").inner_text() == "shipped"  # a model id, never a path
    assert str(runs) not in page.content() and "/model/shipped" not in page.content()
    assert page.locator("table[data-compare]").count() == 0  # the MIML literature only for MIML's labels
    page.screenshot(path=str(SHOTS / "model-trained.png"), full_page=True)

    page.goto(base_url + "/gallery")  # its own dataset's test photos, without a warning
    assert page.locator("[data-label-mismatch]").count() == 0 and page.locator("[data-no-dataset]").count() == 0
    assert page.locator("[data-count]").inner_text() == "24 of 24 test photos"
    page.wait_for_function(
        "() => [...document.querySelectorAll('.gallery img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path=str(SHOTS / "gallery-trained.png"), full_page=True)
    page.goto(base_url + "/models")

    strict = runs / "models" / "strict-copy"  # the same model at other thresholds, to compare against
    shutil.copytree(runs / "models" / model, strict)
    info = json.loads((strict / "thresholds.json").read_text())
    info["thresholds"] = {label: 0.8 for label in OWN_LABELS}
    (strict / "thresholds.json").write_text(json.dumps(info))
    page.reload()
    page.screenshot(path=str(SHOTS / "models.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "models-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    pairs = page.locator("[data-compare-form] select[name=pair] option").all_inner_texts()
    assert pairs == [f"{model} and strict-copy"] or pairs == [f"strict-copy and {model}"]  # the one compatible pair
    page.click("[data-compare-form] button[type=submit]")
    photos = page.locator("[data-disagreements] figure")
    photos.first.wait_for()
    assert photos.count() > 0 and page.locator("[data-compare-metrics] td.better").count() > 0
    names = page.locator("[data-compare-metrics] tbody th").all_inner_texts()
    assert "mAP ↑" in names and "one-error ↓" in names and not any(n.startswith("map") for n in names)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-disagreements] img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path=str(SHOTS / "compare.png"), full_page=True)

    page.goto(base_url + "/models")  # back to the shipped model; delete the copy with its confirmation
    page.locator("tr[data-model='shipped'] [data-use]").click()
    page.locator("tr[data-model='shipped'] .chip", has_text="in use").wait_for()
    page.locator("tr[data-model='strict-copy'] input[name=confirm]").check()
    page.locator("tr[data-model='strict-copy'] [data-delete]").click()
    page.locator("tr[data-model='strict-copy']").wait_for(state="detached")
    assert not strict.exists()


def test_full_mode_progress_draws_the_learning_curve(page, base_url, runs):
    """The page's side of a full run (the job itself is tests/test_training_full.py's): the server's answers are
    stood in for, a run in its fourth epoch of 22 with its losses so far."""
    curve = [{"epoch": i + 1, "loss": 0.6 / (i + 1) ** 0.5, "val_loss": 0.55 / (i + 1) ** 0.4} for i in range(4)]
    status = {
        "job": "full-x",
        "state": "running",
        "progress": 0.21,
        "message": "fine-tuning (whole network): epoch 2/20",
        "eta_s": 754,
        "model": None,
        "curve": curve,
    }
    page.route("**/api/jobs", lambda route: route.fulfill(status=202, json={"job": "full-x"}))
    page.route("**/api/jobs/full-x", lambda route: route.fulfill(json=status))
    page.goto(base_url + "/train")
    page.check("input[name=mode][value=full]")
    page.evaluate(
        "() => { document.querySelector('[data-datasets]').append(new Option('x', 'x', true, true));"
        " document.querySelector('[data-train] button[type=submit]').disabled = false; }"
    )  # no dataset here
    page.click("[data-train] button[type=submit]")
    page.locator("[data-job-curve] polyline.val").wait_for()
    points = page.locator("[data-job-curve] polyline.train").get_attribute("points").split()
    assert len(points) == 4 and float(points[0].split(",")[1]) < float(points[-1].split(",")[1])  # loss falls: y grows
    assert page.locator("[data-job-text]").inner_text() == (
        "running: 21% · fine-tuning (whole network): epoch 2/20, about 13 min left"
    )
    page.locator("[data-job-curve]").screenshot(path=str(SHOTS / "train-curve.png"))
    page.screenshot(path=str(SHOTS / "train-full-progress.png"), full_page=True)


@pytest.mark.needs_data
def test_an_unfamiliar_photo_says_so_on_its_card(page, base_url, tmp_path):
    from tests.helpers import make_non_scenes

    text = tmp_path / "an invoice.png"
    make_non_scenes(n_each=4)[5][1].save(text)  # Pillow-rendered text
    page.goto(base_url + "/")
    page.set_input_files("input[type=file]", str(text))
    card = page.locator("[data-card]")
    card.wait_for(timeout=30000)
    assert "unlike anything the model was trained on" in card.locator("[data-unfamiliar]").inner_text()
    page.screenshot(path=str(SHOTS / "upload-unfamiliar.png"), full_page=True)
