"""The labeller in headless Chromium: a dataset from a folder of 40 photos and 3 label names, 25 photos labelled
with the keyboard while the live model starts suggesting, the export, a quick job, a prediction by the new model.
Screenshots go to artifacts/screenshots/."""

import csv
import io
import shutil
import zipfile

import pytest

from tests.helpers import SHOTS, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.needs_data]
LABELS = ["sea", "sunset", "trees"]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, scenes):
    from app import create_app

    yield from serve(create_app(scenes=scenes, runs_dir=tmp_path_factory.mktemp("runs")))


def test_label_a_folder_with_the_model_in_the_loop(page, base_url, miml_data, tmp_path):
    rows = list(csv.DictReader(open(miml_data / "labels.csv")))[::50][:40]
    truth = {r["image"]: {l for l in LABELS if r[l] == "1"} for r in rows}
    folder = tmp_path / "holiday"
    folder.mkdir()
    for r in rows:
        shutil.copy(miml_data / "original" / r["image"], folder / r["image"])

    page.goto(base_url + "/label")
    page.set_input_files("[data-folder]", str(folder))
    page.fill("[data-labels]", "sea, sunset, trees")
    page.click("[data-create] button[type=submit]")
    page.wait_for_url("**/label/holiday-*", timeout=60000)
    dataset = page.url.rsplit("/", 1)[1]

    page.locator("[data-embedded]").filter(has_text="embeddings ready").wait_for(timeout=120000)
    name = page.locator("[data-photo-name]")
    toggles, suggested_photos = 0, 0
    for n in range(25):
        name.filter(has_text=".jpg").wait_for()
        image = name.inner_text().split()[0]
        chips = page.locator("[data-chips] .chip")
        on = {chips.nth(i).get_attribute("data-label") for i in range(3) if "on" in chips.nth(i).get_attribute("class")}
        suggested_photos += "%" in page.locator("[data-chips]").inner_text()
        for i, label in enumerate(LABELS):
            if (label in on) != (label in truth[image]):
                page.keyboard.press(str(i + 1))
                toggles += 1
        if n == 20:
            page.screenshot(path=str(SHOTS / "labeller.png"), full_page=True)
        page.keyboard.press("Enter")
        page.locator("[data-status]").filter(has_text=f"Saved {image}").wait_for()
    assert suggested_photos > 0  # the live model made suggestions on the way
    page.locator("[data-labelled]").filter(has_text="25").wait_for(timeout=10000)

    page.click("[data-mode]")  # the grid: 15 photos left, with their suggestions
    page.locator("[data-grid-photos] figure").nth(14).wait_for()
    assert page.locator("[data-grid-photos] figure").count() == 15
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-grid-photos] img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path=str(SHOTS / "labeller-grid.png"), full_page=True)

    with page.expect_download() as download:
        page.click("[data-export]")
    with zipfile.ZipFile(download.value.path()) as zf:
        table = list(csv.reader(io.StringIO(zf.read("labels.csv").decode())))
    assert table[0] == ["image", *LABELS] and len(table) == 26
    assert all({l for l, v in zip(LABELS, row[1:]) if v == "1"} == truth[row[0]] for row in table[1:])

    page.click("[data-train]")
    job = page.locator("[data-job]")
    page.wait_for_function(
        "() => ['done', 'failed'].includes(document.querySelector('[data-job]').dataset.state)", timeout=300000
    )
    assert job.get_attribute("data-state") == "done", job.inner_text()
    page.screenshot(path=str(SHOTS / "labeller-trained.png"), full_page=True)
    model = job.get_attribute("data-model")
    photo = miml_data / "original" / rows[-1]["image"]
    answer = page.request.post(
        f"{base_url}/api/predict?model={model}",
        multipart={"image": {"name": photo.name, "mimeType": "image/jpeg", "buffer": photo.read_bytes()}},
    )
    assert answer.ok, answer.text()
    assert set(answer.json()["results"][0]["probabilities"]) == set(LABELS)
    assert dataset in page.url
