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
    while page.locator("[data-job]").get_attribute("data-state") in ("queued", "running"):
        seen.add(bar.evaluate("e => e.value"))
        page.wait_for_timeout(300)
    assert page.locator("[data-job]").get_attribute("data-state") == "done", page.locator(
        "[data-job-text]"
    ).inner_text()
    assert len({v for v in seen if 0 < v < 1}) >= 2  # the bar moved while it ran (its last step, the LiteRT
    # conversion, takes seconds; the embeddings of 120 photos may pass between two polls)
    assert bar.evaluate("e => e.value") == 1 and page.locator("[data-job-cancel]").is_hidden()
    model = page.locator("[data-job-model]").inner_text()
    page.screenshot(path=str(SHOTS / "train-done.png"), full_page=True)

    page.click("[data-job-done] a")
    page.locator(f"tr[data-model='{model}'] [data-use]").click()
    page.locator(f"tr[data-model='{model}'] .chip", has_text="in use").wait_for()
    assert "labels: water, golden, green" in page.locator("footer").inner_text()
    assert page.locator("tr[data-model='shipped'] [data-delete]").count() == 0  # never offered

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

    page.select_option("[data-compare-form] select[name=a]", model)
    page.select_option("[data-compare-form] select[name=b]", "strict-copy")
    page.click("[data-compare-form] button[type=submit]")
    photos = page.locator("[data-disagreements] figure")
    photos.first.wait_for()
    assert photos.count() > 0 and page.locator("[data-compare-metrics] td.better").count() > 0
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
