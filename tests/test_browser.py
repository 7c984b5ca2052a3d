"""The pages in real headless Chromium (Debian's chromium driven by Playwright). Screenshots go to artifacts/."""

import pytest

from model.metrics import evaluate
from model.thresholds import apply_thresholds
from tests.helpers import SHOTS

pytestmark = [pytest.mark.browser, pytest.mark.needs_data]


def test_upload_shows_bars_chips_and_gradcam(page, base_url, miml_data, sea_photo, tmp_path):
    photo = tmp_path / "sea photo.jpg"
    photo.write_bytes(sea_photo)
    page.goto(base_url + "/")
    page.set_input_files("input[type=file]", str(photo))
    card = page.locator("[data-card]")
    card.wait_for(timeout=30000)
    assert card.locator(".bar-row").count() == 5
    assert card.locator(".chip", has_text="sea").count() == 1
    overlay = card.locator(".cam-1")
    assert float(overlay.evaluate("e => getComputedStyle(e).opacity")) == 0
    card.locator(".cam-btn", has_text="sea").click()
    sea_cam = card.locator(".cam-3")  # labels in order: desert, mountains, sea
    page.wait_for_function("e => getComputedStyle(e).opacity > 0.5", arg=sea_cam.element_handle())
    card.locator("[data-opacity]").fill("30")
    page.wait_for_function("e => Math.abs(getComputedStyle(e).opacity - 0.3) < 0.01", arg=sea_cam.element_handle())
    page.screenshot(path=str(SHOTS / "upload.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "upload-phone.png"), full_page=True)


def test_upload_works_without_javascript(browser, base_url, sea_photo, tmp_path):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    photo = tmp_path / "plain.jpg"
    photo.write_bytes(sea_photo)
    page.goto(base_url + "/")
    page.set_input_files("input[type=file]", str(photo))
    page.click("button.primary")
    page.locator("[data-card]").wait_for()
    assert page.locator(".bar-row").count() == 5
    page.locator(".cam-btn", has_text="sea").click()  # CSS-only switching
    page.wait_for_timeout(500)  # the overlay's fade-in transition
    assert float(page.locator(".cam-3").evaluate("e => getComputedStyle(e).opacity")) > 0.5
    context.close()


def test_detail_page_layer_browser(page, base_url, scenes):
    page.goto(f"{base_url}/photo/{scenes.test_photos[0].photo_id}")
    page.locator("button[value=m2_block03_expand_activation]").click()
    page.locator("figure.grid img").wait_for()
    assert "m2_block03_expand_activation" in page.locator("figure.grid figcaption").inner_text()
    page.screenshot(path=str(SHOTS / "photo.png"), full_page=True)


def test_gallery_filter_false_positives(page, base_url, scenes):
    page.goto(base_url + "/gallery")
    page.select_option("select[name=label]", "sea")
    page.select_option("select[name=show]", "fp")
    page.click(".filters button")
    page.wait_for_url("**/gallery?*show=fp*")
    j = scenes.labels.index("sea")
    expected = [t for t in scenes.test_photos if t.predicted[j] and not t.truth[j]]
    assert page.locator("li.thumb").count() == min(len(expected), 40)
    assert page.locator("li.thumb .chip.fp", has_text="sea").count() == min(len(expected), 40)
    page.screenshot(path=str(SHOTS / "gallery-fp.png"), full_page=True)
    page.goto(base_url + "/gallery")
    page.screenshot(path=str(SHOTS / "gallery.png"))


def assert_page_shows_metrics(page, scenes, thresholds):
    """The live numbers on the evaluation page are model.metrics' on the stored test predictions at `thresholds`."""
    info = scenes.classifier.info
    _, truth, probs = info.test_predictions()
    m = evaluate(truth, probs, thresholds, info.labels, info.at_least_one)
    predicted = apply_thresholds(probs, thresholds, info.at_least_one)
    for key in ["hamming_loss", "exact_match", "micro_f1", "macro_f1", "samples_f1"]:  # shown to 4 decimals
        assert abs(float(page.locator(f'[data-live="{key}"]').inner_text()) - m[key]) <= 0.00005, key
    for j, label in enumerate(info.labels):
        panel = page.locator(f'[data-label-index="{j}"]')
        for key in ["precision", "recall", "f1", "mcc"]:  # shown to 3 decimals
            assert abs(float(panel.locator(f'[data-pl="{key}"]').inner_text()) - m["per_label"][label][key]) <= 0.0005
        t, p = truth[:, j] == 1, predicted[:, j] == 1
        counts = {"tp": t & p, "fp": ~t & p, "fn": t & ~p, "tn": ~t & ~p}
        assert {k: int(panel.locator(f'[data-cm="{k}"]').inner_text()) for k in counts} == {
            k: int(v.sum()) for k, v in counts.items()
        }, label


def test_threshold_sliders_show_the_metrics_of_model_metrics(page, base_url, scenes):
    page.goto(base_url + "/evaluation")
    tuned = scenes.classifier.info.thresholds
    assert_page_shows_metrics(page, scenes, tuned)
    page.locator('[data-label-index="2"] [data-threshold]').fill("0.98")
    moved = tuned.copy()
    moved[2] = 0.98
    assert_page_shows_metrics(page, scenes, moved)
    page.screenshot(path=str(SHOTS / "evaluation-moved.png"), full_page=True)
    page.click("[data-reset]")
    assert_page_shows_metrics(page, scenes, tuned)
    page.screenshot(path=str(SHOTS / "evaluation.png"), full_page=True)


def test_model_page(page, base_url):
    page.goto(base_url + "/model")
    assert "Parameters" in page.inner_text("main")
    page.screenshot(path=str(SHOTS / "model.png"), full_page=True)
