"""Every route of the web app through Flask's test client, on the shipped model."""

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from model.modeldir import SHIPPED_MODEL_DIR

SCRIPT_IN_LABEL = "sea</script><script>alert(1)</script>"


def post_photos(client, url, *files, **kw):
    data = {"image": [(io.BytesIO(content), name) for name, content in files]}
    return client.post(url, data=data, content_type="multipart/form-data", **kw)


@pytest.mark.needs_data
def test_health_and_model(client, scenes):
    assert client.get("/api/health").get_json() == {"status": "ok"}
    info = client.get("/api/model").get_json()
    assert info["labels"] == scenes.labels == ["desert", "mountains", "sea", "sunset", "trees"]
    assert set(info["thresholds"]) == set(info["labels"]) and info["input_size"] == scenes.classifier.size
    assert 0 < info["metrics"]["test"]["hamming_loss"] < 0.5


@pytest.mark.needs_data
def test_api_predict_one_and_many(client, sea_photo, desert_photo):
    r = post_photos(client, "/api/predict", ("sea.jpg", sea_photo), ("desert.jpg", desert_photo))
    assert r.status_code == 200
    body = r.get_json()
    assert [x["filename"] for x in body["results"]] == ["sea.jpg", "desert.jpg"]
    sea, desert = body["results"]
    assert "sea" in sea["predicted"] and "desert" in desert["predicted"]
    assert set(sea["probabilities"]) == set(body["thresholds"])
    assert all(0 <= p <= 1 for p in sea["probabilities"].values())


@pytest.mark.needs_data
def test_api_predict_matches_cli_path(client, scenes, sea_photo):
    body = post_photos(client, "/api/predict", ("a.jpg", sea_photo)).get_json()
    direct = scenes.classifier.classify(scenes.classifier.load(sea_photo)[None])[0]
    assert body["results"][0]["probabilities"] == direct["probabilities"]


@pytest.mark.needs_data
def test_api_gradcam(client, sea_photo):
    r = post_photos(client, "/api/predict?gradcam=sea", ("a.jpg", sea_photo))
    cam = r.get_json()["results"][0]["gradcam"]
    im = Image.open(io.BytesIO(base64.b64decode(cam["png_base64"])))
    assert cam["label"] == "sea" and im.format == "PNG" and im.mode == "RGBA"
    r = post_photos(client, "/api/predict?gradcam=volcano", ("a.jpg", sea_photo))
    assert r.status_code == 400 and "volcano" in r.get_json()["error"]


@pytest.mark.needs_data
@pytest.mark.parametrize(
    "name, content, status, words",
    [
        ("empty.jpg", b"", 400, "empty"),
        ("notes.jpg", b"just some text", 415, "not an image"),
        ("doc.pdf", b"%PDF-1.4\n%...", 415, "not an image"),
    ],
)
def test_api_bad_files(client, name, content, status, words):
    r = post_photos(client, "/api/predict", (name, content))
    assert r.status_code == status and words in r.get_json()["error"] and name in r.get_json()["error"]


@pytest.mark.needs_data
def test_api_errors_without_file_and_wrong_method(client):
    r = client.post("/api/predict", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and "image" in r.get_json()["error"]
    r = client.get("/api/predict")
    assert r.status_code == 405 and "error" in r.get_json()


@pytest.mark.needs_data
def test_upload_page_and_form_post(client, sea_photo):
    page = client.get("/")
    assert page.status_code == 200 and b'enctype="multipart/form-data"' in page.data
    r = post_photos(client, "/", ("my sea.jpg", sea_photo))
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and "my sea.jpg" in html
    assert html.count('class="bar-row') == 5 and html.count('class="bar-threshold"') == 5
    assert '<span class="chip">sea</span>' in html
    assert html.count('class="cam cam-') == 5  # one Grad-CAM overlay per label


@pytest.mark.needs_data
def test_upload_fragment_and_per_file_errors(client, sea_photo):
    r = post_photos(client, "/", ("ok.jpg", sea_photo), ("bad.jpg", b"nope"), headers={"X-Requested-With": "fetch"})
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and "<html" not in html
    assert "bad.jpg: not an image" in html and html.count("data-card") == 1
    r = post_photos(client, "/", ("bad.jpg", b"nope"))
    assert r.status_code == 415 and "bad.jpg" in r.get_data(as_text=True)


@pytest.mark.needs_data
def test_inspect_uploaded_photo_and_layers(client, scenes, sea_photo):
    html = post_photos(client, "/", ("a.jpg", sea_photo)).get_data(as_text=True)
    pixels = re.search(r'name="pixels" value="([^"]+)"', html).group(1)
    sent = Image.open(io.BytesIO(base64.b64decode(pixels)))
    assert sent.format == "WEBP" and np.array_equal(np.asarray(sent.convert("RGB")), scenes.classifier.load(sea_photo))
    r = client.post("/inspect", data={"pixels": pixels, "name": "a.jpg", "layer": "m1_block05_dw_activation"})
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and "Layer activations" in page and "m1_block05_dw_activation</strong>" in page
    assert client.post("/inspect", data={"pixels": "!!!"}).status_code == 400
    r = client.post("/inspect", data={"pixels": pixels, "layer": "no_such_layer"})
    assert r.status_code == 404 and "no_such_layer" in r.get_data(as_text=True)


@pytest.mark.needs_data
def test_photo_detail_and_layers(client, scenes):
    test_id = scenes.test_photos[0].photo_id
    r = client.get(f"/photo/{test_id}")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and "top_activation" in html and "✓ true" in html
    r = client.get(f"/photo/{test_id}?layer=m1_stem_activation")  # the Lite0 member's stem
    assert r.status_code == 200 and "of 32 channels" in r.get_data(as_text=True)
    assert client.get(f"/photo/{test_id}?layer=pool").status_code == 404  # not convolutional
    r = client.get(f"/photo/{test_id}?layer=top_activation")  # both members' last maps, side by side
    assert r.status_code == 200 and "of 2560 channels" in r.get_data(as_text=True)


@pytest.mark.needs_data
@pytest.mark.parametrize(
    "url",
    [
        "/photo/0",
        "/photo/2001",
        "/photo/-1",
        "/photo/abc",
        "/photo/..%2F..%2Fetc%2Fpasswd",
        "/photo/1/thumb.jpg/../../x",
        "/photo/99999/thumb.jpg",
    ],
)
def test_bad_photo_urls_are_404(client, url):
    assert client.get(url).status_code == 404


@pytest.mark.needs_data
def test_thumbnail(client, scenes):
    r = client.get(f"/photo/{scenes.test_photos[0].photo_id}/thumb.jpg")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(r.data)).size == (176, 176)


@pytest.mark.needs_data
def test_gallery_filters(client, scenes):
    html = client.get("/gallery").get_data(as_text=True)
    assert f"{len(scenes.test_photos)} of {len(scenes.test_photos)} test photos" in html
    assert html.count('<li class="thumb') == 40  # first page
    j = scenes.labels.index("sea")
    fps = [t for t in scenes.test_photos if t.predicted[j] and not t.truth[j]]
    html = client.get("/gallery?label=sea&show=fp").get_data(as_text=True)
    assert f"{len(fps)} of {len(scenes.test_photos)}" in html
    for t in fps[:40]:
        assert f'href="/photo/{t.photo_id}"' in html
    wrong = [t for t in scenes.test_photos if t.errors().any()]
    assert f"{len(wrong)} of" in client.get("/gallery?show=wrong").get_data(as_text=True)
    right = client.get("/gallery?show=right&sort=confidence").get_data(as_text=True)
    assert f"{len(scenes.test_photos) - len(wrong)} of" in right


@pytest.mark.needs_data
@pytest.mark.parametrize(
    "query, status", [("show=fp", 400), ("label=volcano", 400), ("sort=x", 400), ("page=999", 404), ("page=x", 400)]
)
def test_gallery_bad_queries(client, query, status):
    assert client.get(f"/gallery?{query}").status_code == status


def test_gallery_without_dataset(client_without_data):
    html = client_without_data.get("/gallery").get_data(as_text=True)
    assert "No dataset is loaded" in html and "twopothead/miml-image-data" in html
    assert client_without_data.get("/photo/1").status_code == 404
    assert client_without_data.get("/api/health").status_code == 200


@pytest.mark.needs_data
def test_evaluation_page_embeds_test_probabilities(client, scenes):
    html = client.get("/evaluation").get_data(as_text=True)
    data = json.loads(re.search(r'<script type="application/json" id="eval-data">(.*?)</script>', html, re.S).group(1))
    assert data["labels"] == scenes.labels and len(data["probs"]) == len(data["truth"]) == 400
    assert html.count("data-threshold") == 5 and "Hamming loss" in html and "mAP" in html


@pytest.mark.needs_data
def test_model_page(client, scenes, miml_data):
    html = client.get("/model").get_data(as_text=True)
    parameters = scenes.classifier.model.count_params()  # counted by Keras, not read from metrics.json
    assert f"<th>Parameters</th><td>{parameters:,}</td>" in html and parameters > 3_000_000
    assert "<th>Input</th><td>224 × 224 RGB" in html
    tuned = json.loads((SHIPPED_MODEL_DIR / "thresholds.json").read_text())["thresholds"]
    assert " · ".join(f"{l} {t:.3f}" for l, t in tuned.items()) in html  # desert 0.645 · mountains 0.620 · ...
    assert f"dataset <code>{miml_data.resolve().name}</code> (2000 photos)" in html
    assert str(miml_data.resolve().parent) not in html  # the dataset's name, never its absolute path


@pytest.fixture(scope="module")
def client_with_script_label(tmp_path_factory):
    """The shipped model with its label 'sea' renamed to a name that closes a script tag."""
    model = tmp_path_factory.mktemp("scriptlabel") / "model"
    shutil.copytree(SHIPPED_MODEL_DIR, model)
    for name in ("thresholds.json", "metrics.json"):
        path = model / name
        path.write_text(path.read_text().replace('"sea"', json.dumps(SCRIPT_IN_LABEL)))
    csv = model / "test_predictions.csv"
    header, rest = csv.read_text().split("\n", 1)
    csv.write_text(header.replace("_sea", "_" + SCRIPT_IN_LABEL) + "\n" + rest)
    from app import create_app

    return create_app(model_dir=model).test_client()


@pytest.mark.parametrize("url", ["/evaluation", "/model", "/gallery"])
def test_a_label_name_cannot_inject_markup(client_with_script_label, url):
    r = client_with_script_label.get(url)
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and "<script>alert" not in html and "</script><script>" not in html
    if url == "/evaluation":
        data = json.loads(
            re.search(r'<script type="application/json" id="eval-data">(.*?)</script>', html, re.S).group(1)
        )
        assert data["labels"][2] == SCRIPT_IN_LABEL


@pytest.mark.needs_data
def test_too_many_form_parts_says_so(client):
    fields = {f"field{i}": "x" for i in range(40)}  # a few hundred bytes: far under the size limit
    r = client.post("/api/predict", data=fields, content_type="multipart/form-data")
    assert r.status_code == 413
    assert r.get_json() == {"error": "the upload has too many form parts: at most 32 per request"}
    r = client.post("/", data=fields, content_type="multipart/form-data")
    assert r.status_code == 413 and "too many form parts" in r.get_data(as_text=True)


@pytest.mark.needs_data
@pytest.mark.parametrize(
    "host, status",
    [
        ("localhost", 200),
        ("127.0.0.1:5000", 200),
        ("[::1]:5000", 200),
        ("evil.example", 400),
        ("localhost.evil.example", 400),
    ],
)
def test_host_header_is_checked(client, host, status):
    r = client.get("/api/health", headers={"Host": host})
    assert r.status_code == status
    if status == 400:
        assert f"does not answer for the host '{host}'" in r.get_json()["error"]
        page = client.get("/", headers={"Host": host})
        assert page.status_code == 400 and "does not answer for the host" in page.get_data(as_text=True)


@pytest.mark.needs_data
def test_security_headers(client):
    r = client.get("/")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in r.get_data(as_text=True)  # no inline script
