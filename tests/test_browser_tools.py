"""The camera, the batch page (folder and ZIP), label-set links and the model page in headless Chromium.

Chromium runs with a fake camera (a moving test pattern) that it may use without asking."""

import csv
import io
import json
import shutil
import zipfile

import pytest

from tests.helpers import CHROMIUM_ARGS, SHOTS

pytestmark = [pytest.mark.browser, pytest.mark.needs_data]

CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
BAD = {"notes.jpg": (b"just some text, not a photo", "not an image"), "empty.jpg": (b"", "the file is empty")}


@pytest.fixture(scope="module")
def browser():
    """Chromium with a fake camera (conftest's browser, with CAMERA_ARGS)."""
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_ARGS + CAMERA_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    """A page whose script errors fail the test; the 4xx answers the batch page gets for bad files are expected."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, permissions=["camera"])
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "console",
        lambda m: (
            m.type == "error"
            and not (m.location["url"].endswith("/api/predict") and "status of 4" in m.text)
            and errors.append(m.text)
        ),
    )
    yield page
    context.close()
    assert not errors, f"browser errors: {errors}"


@pytest.fixture(scope="module")
def photos(scenes, miml_data):
    """38 MIML photos as {relative path: bytes} (some in a subfolder) and what /api/predict answers for each."""
    files = {
        (f"sub/{name}" if i % 3 == 0 else name): (miml_data / "original" / name).read_bytes()
        for i, name in enumerate(scenes.dataset.images[:38])
    }
    c = scenes.classifier
    return files, {path: c.classify(c.load(data)[None], batch_size=1)[0] for path, data in files.items()}


def table_rows(page):
    """[(photo, [cells after the photo], is an error row)] of the batch table as shown."""
    return page.eval_on_selector_all(
        "[data-batch-table] tbody tr",
        """trs => trs.map(tr => [
        tr.cells[0].textContent, [...tr.cells].slice(1).map(td => td.textContent), tr.classList.contains('error')])""",
    )


def assert_full_table(page, expected, bad, labels):
    """Every photo of `expected` ({name: API result}) has its row with its labels and probabilities, and every
    name in `bad` ({name: words of its error}) an error row."""
    rows = {name: (cells, error) for name, cells, error in table_rows(page)}
    assert set(rows) == set(expected) | set(bad)
    for name, words in bad.items():
        cells, error = rows[name]
        assert error and words in cells[0], name
    for name, result in expected.items():
        cells, error = rows[name]
        assert not error and cells[0] == (", ".join(result["predicted"]) or "no label"), name
        assert [float(x) for x in cells[1:]] == pytest.approx([result["probabilities"][l] for l in labels], abs=5e-5)


def test_camera_photo_is_predicted_like_an_upload(page, base_url):
    page.goto(base_url + "/")
    page.click("[data-camera-start]")
    page.wait_for_function("() => document.querySelector('[data-camera-video]').videoWidth > 0", timeout=15000)
    page.click("[data-camera-shoot]")
    card = page.locator("[data-card]")
    card.wait_for(timeout=30000)
    assert card.locator(".card-title").inner_text().startswith("camera-")
    probabilities = card.locator(".bar-row").evaluate_all(
        "rows => rows.map(r => [r.dataset.label, Number(r.dataset.p)])"
    )
    assert [l for l, _ in probabilities] == ["desert", "mountains", "sea", "sunset", "trees"]
    assert all(0 <= p <= 1 for _, p in probabilities)
    page.screenshot(path=str(SHOTS / "camera.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(SHOTS / "camera-phone.png"), full_page=True)
    page.click("[data-camera-stop]")
    assert page.locator("[data-camera-view]").is_hidden()


def test_folder_through_the_batch_page(page, base_url, photos, scenes, tmp_path):
    files, expected = photos
    folder = tmp_path / "holiday"
    for path, data in {**files, **{n: content for n, (content, _) in BAD.items()}}.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    (folder / ".DS_Store").write_bytes(b"\0\0")  # hidden: left out
    page.goto(base_url + "/batch")
    page.set_input_files("[data-batch-folder]", str(folder))
    page.wait_for_selector("[data-batch-status]:has-text('Done')", timeout=120000)
    status = page.inner_text("[data-batch-status]")
    assert (
        status.startswith("Done: 40 of 40 photos")
        and "2 could not be read" in status
        and "1 hidden file left out" in status
    )
    expected = {f"holiday/{p}": r for p, r in expected.items()}
    bad = {f"holiday/{n}": words for n, (_, words) in BAD.items()}
    assert_full_table(page, expected, bad, scenes.labels)

    # sorting: by sea, highest first, errors last; a second click reverses it
    sea = lambda names: [expected[n]["probabilities"]["sea"] if n in expected else -1 for n in names]  # noqa: E731
    page.click("[data-sort=sea]")
    shown = [name for name, _, _ in table_rows(page)]
    assert sea(shown) == sorted(sea(shown), reverse=True) and set(shown[-2:]) == set(bad)
    assert page.get_attribute("th:has([data-sort=sea])", "aria-sort") == "descending"
    page.screenshot(path=str(SHOTS / "batch.png"), full_page=True)
    page.click("[data-sort=sea]")
    shown = [name for name, _, _ in table_rows(page)]
    assert sea(shown) == sorted(sea(shown)) and set(shown[:2]) == set(bad)

    # the CSV download is the table, in its order
    with page.expect_download() as info:
        page.click("[data-download=csv]")
    download = info.value
    assert download.suggested_filename == "predictions.csv"
    lines = list(csv.reader(io.StringIO(open(download.path()).read())))
    assert lines[0] == ["path", *scenes.labels, "predicted", "familiarity", "unfamiliar", "error"]
    assert [line[0] for line in lines[1:]] == [name for name, _, _ in table_rows(page)]
    for path, *probs, predicted, score, unfamiliar, error in lines[1:]:
        if path in bad:
            assert probs == [""] * 5 and predicted == "" and bad[path] in error and score == unfamiliar == ""
        else:
            assert [float(p) for p in probs] == [expected[path]["probabilities"][l] for l in scenes.labels]
            assert predicted.split() == expected[path]["predicted"] and error == ""
            assert float(score) == pytest.approx(expected[path]["familiarity"]["score"], abs=2e-4)
            assert unfamiliar == str(int(expected[path]["familiarity"]["unfamiliar"]))
    with page.expect_download() as info:
        page.click("[data-download=json]")
    listed = json.loads(open(info.value.path()).read())
    assert [r["path"] for r in listed] == [line[0] for line in lines[1:]]
    for r in listed:
        if r["path"] in bad:
            assert r["probabilities"] is None and r["predicted"] == [] and bad[r["path"]] in r["error"]
        else:
            assert {k: r[k] for k in ("probabilities", "predicted")} == {
                k: expected[r["path"]][k] for k in ("probabilities", "predicted")
            }
            known = expected[r["path"]]["familiarity"]
            assert r["familiarity"]["unfamiliar"] is known["unfamiliar"]
            assert r["familiarity"]["score"] == pytest.approx(known["score"], abs=2e-4)
            assert r["error"] is None
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the table scrolls inside its box
    page.screenshot(path=str(SHOTS / "batch-phone.png"))


def test_a_thousand_photos_without_a_reload(page, base_url, miml_data, tmp_path):
    """About 20 s here (benchmarks/batch_page.py times the same against waitress)."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i, path in enumerate(sorted((miml_data / "original").iterdir())[:1000]):
        (folder / f"{i:04d}.jpg").write_bytes(path.read_bytes())
    (folder / "bad.jpg").write_bytes(b"not a photo")
    page.goto(base_url + "/batch")
    page.evaluate("() => { window.notReloaded = true; }")
    page.set_input_files("[data-batch-folder]", str(folder))
    page.wait_for_selector("[data-batch-status]:has-text('Done')", timeout=300000)
    assert page.evaluate("() => window.notReloaded") is True
    assert page.locator("[data-batch-table] tbody tr").count() == 1001
    assert page.locator("[data-batch-table] tbody tr.error").count() == 1
    assert page.inner_text("[data-batch-status]").startswith("Done: 1001 of 1001 photos")


def set_stated_size(archive, name, size):
    """Overwrite the uncompressed size the ZIP's central directory states for entry `name`."""
    data = bytearray(archive.read_bytes())
    at = data.index(b"PK\x01\x02")  # a central directory signature; the name must follow it too
    while data[at + 46 : at + 46 + int.from_bytes(data[at + 28 : at + 30], "little")] != name.encode():
        at = data.index(b"PK\x01\x02", at + 4)
    data[at + 24 : at + 28] = size.to_bytes(4, "little")
    archive.write_bytes(bytes(data))


def test_zip_through_the_batch_page(page, base_url, photos, scenes, tmp_path):
    files, expected = photos
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("album/", b"")  # a folder entry
        for i, (path, data) in enumerate(files.items()):  # deflated and stored entries, alternately
            z.writestr(f"album/{path}", data, compress_type=zipfile.ZIP_DEFLATED if i % 2 else zipfile.ZIP_STORED)
        for name, (content, _) in BAD.items():
            z.writestr(name, content, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("__MACOSX/album/._1.jpg", b"resource fork")
        z.writestr("bomb.jpg", bytes(1_000_000), compress_type=zipfile.ZIP_DEFLATED)  # 1 KB deflated
        z.writestr("huge.jpg", b"x", compress_type=zipfile.ZIP_STORED)
    set_stated_size(archive, "bomb.jpg", 1000)  # says 1000 bytes: inflating it stops there
    set_stated_size(archive, "huge.jpg", 11 * 2**20)  # says 11 MB: never read
    page.goto(base_url + "/batch")
    page.set_input_files("[data-batch-zip]", str(archive))
    page.wait_for_selector("[data-batch-status]:has-text('Done')", timeout=120000)
    assert page.inner_text("[data-batch-status]").startswith("Done: 42 of 42 photos")
    bad = {n: words for n, (_, words) in BAD.items()}
    bad.update({"bomb.jpg": "inflates past its stated size", "huge.jpg": "11.0 MB unzipped, over the 10 MB a request"})
    assert_full_table(page, {f"album/{p}": r for p, r in expected.items()}, bad, scenes.labels)

    page.goto(base_url + "/batch")
    page.set_input_files(
        "[data-batch-zip]", files=[{"name": "x.zip", "mimeType": "application/zip", "buffer": b"PK nothing"}]
    )
    page.wait_for_selector("[data-batch-status]:has-text('not a ZIP file')")


def test_label_set_link_opens_those_photos(page, base_url):
    page.goto(base_url + "/evaluation")
    link = page.locator("[data-label-sets] a").first
    n = int(link.inner_text())
    page.locator("#label-sets").screenshot(path=str(SHOTS / "label-sets.png"))
    link.click()
    page.wait_for_url("**/gallery?*truth=*")
    assert page.locator("li.thumb").count() == n
    assert page.inner_text("[data-count]") == f"{n} of 400 test photos"
    page.screenshot(path=str(SHOTS / "gallery-label-set.png"), full_page=True)


def test_model_page_curve_and_comparison(page, base_url):
    page.goto(base_url + "/model")
    assert page.locator("img[data-curve]").evaluate("img => img.complete && img.naturalWidth") > 300
    assert page.locator("[data-compare] tbody tr").count() == 5
    assert page.locator("[data-compare] tr.ours th").all_inner_texts() == [
        "efficientnet-lite0 + efficientnet-lite1 (ensemble) (this model)",
        "efficientnet-lite0, upload augmentation: the training recipe, cross-validated",
    ]
    page.screenshot(path=str(SHOTS / "model-compare.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the wide table scrolls inside its box
    page.screenshot(path=str(SHOTS / "model-compare-phone.png"), full_page=True)
