"""The one forward pass: class maps against Grad-CAM's gradients (LiteRT against Keras: tests/test_parity.py),
DCT-scaled decoding of large JPEGs, phone formats, the format allow-list, concurrency, and the app's one door."""

import ast
import json
import io
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageOps

from model.data import load_dataset, split
from model.inference import Classifier
from model.preprocess import decode, decoded_pixels, letterbox, load_image
from tests.helpers import ROOT, run


@pytest.fixture(scope="module")
def lite():
    return Classifier(runtime="litert", workers=2)  # a pool of two interpreters (OpenVINO: tests/test_parity.py)


@pytest.fixture(scope="module")
def plain(lite):
    """The shipped model without test-time augmentation: one pass on the photo as it is (`lite` itself where that
    is the shipped model's own mode: one copy of the ensemble less in memory)."""
    return lite if lite.tta == "none" else Classifier(tta="none", runtime="litert")


@pytest.fixture(scope="module")
def test_split(miml_data):
    dataset = load_dataset(miml_data)
    return dataset, split(len(dataset.images))[2]


def jpeg(im, quality=92):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# First in the module: its three conversions (of the small seed CNN, about 0.6 GB more) run before the module's
# ensembles load, not on top of them.
@pytest.mark.slow  # three LiteRT conversions
@pytest.mark.needs_data
def test_litert_cache_is_keyed_and_a_corrupt_one_rebuilt(tmp_path, monkeypatch, seed_model_dir, sea_photo):
    """Three conversions, of the small seed CNN (the ensemble's took a minute and 1 GB): the cache is the same."""
    monkeypatch.setenv("MIML_CACHE", str(tmp_path))
    first = Classifier(seed_model_dir, runtime="litert")
    (cached,) = (tmp_path / "litert").glob("*.tflite")
    from model.backbones.torch_legacy import sha256_of

    assert cached.stem == sha256_of(seed_model_dir / "model.keras")
    cached.write_bytes(cached.read_bytes()[:1000])  # a half-written cache file
    second = Classifier(seed_model_dir, runtime="litert")
    assert cached.stat().st_size > 10_000_000
    assert first.classify(first.load(sea_photo)[None]) == second.classify(second.load(sea_photo)[None])
    Classifier(seed_model_dir, tta="flip", runtime="litert")  # the TTA mode is in the key: another flatbuffer
    assert {p.stem for p in (tmp_path / "litert").glob("*.tflite")} == {cached.stem, cached.stem + "-flip"}


def gradcam_by_gradients(model, photos):
    """Textbook Grad-CAM with TensorFlow's gradients, (photos, labels, h, w): weights = spatial mean of
    d p / d features. One forward pass for the batch: a photo's probabilities depend on its own features only, so
    the gradient of a label's probabilities summed over the batch holds each photo's own."""
    import keras
    import tensorflow as tf

    cam_model = keras.Model(model.inputs, [model.get_layer("top_activation").output, model.output])
    with tf.GradientTape(persistent=True) as tape:
        features, probs = cam_model(tf.constant(photos, tf.float32), training=False)
        scores = [tf.reduce_sum(probs[:, label]) for label in range(model.output_shape[-1])]
    maps = []
    for score in scores:
        weights = tf.reduce_mean(tape.gradient(score, features), axis=(1, 2))
        cams = tf.nn.relu(tf.einsum("nhwc,nc->nhw", features, weights)).numpy()
        maps.append(cams / np.maximum(cams.max(axis=(1, 2), keepdims=True), 1e-12))
    return np.stack(maps, axis=1)


@pytest.mark.slow  # TensorFlow's gradients for 5 labels of 12 photos
@pytest.mark.needs_data
def test_class_maps_equal_gradient_gradcam_on_real_photos(plain, test_split):
    dataset, test_idx = test_split
    photos = dataset.load_photos(test_idx[:12], plain.size)
    for batch in np.split(photos, 12):  # a photo a pass: the tape holds one photo's activations
        expected = gradcam_by_gradients(plain.model, batch)
        for pixels, probs, want in zip(batch, plain.probabilities(batch), expected):
            got = plain.class_maps(pixels)
            assert got.shape == (5, 7, 7) and got.min() >= 0
            assert set(np.round(got.max(axis=(1, 2)), 6)) <= {0.0, 1.0}  # each map scaled to 1, or nowhere positive
            for label in range(5):
                if probs[label] * (1 - probs[label]) > 1e-5:  # a saturated sigmoid has no gradient left to follow
                    np.testing.assert_allclose(got[label], want[label], atol=1e-4)


@pytest.mark.slow  # two more ensembles (flip TTA: LiteRT and Keras)
@pytest.mark.needs_data
def test_flip_tta_averages_the_photo_and_its_mirror(plain, sea_photo, test_split):
    """In one pass: probabilities and embeddings are the two means, the feature map the mean with the mirror's
    flipped back, so the class maps of a mirrored photo are the mirror of its class maps."""
    flip = Classifier(tta="flip", runtime="litert")
    dataset, test_idx = test_split
    x = dataset.load_photos(test_idx[:8], plain.size)
    f, e, p = plain.forward(x)
    fm, em, pm = plain.forward(x[:, :, ::-1])
    ff, ef, pf = flip.forward(x)
    np.testing.assert_allclose(pf, (p + pm) / 2, atol=1e-6)
    np.testing.assert_allclose(ef, (e + em) / 2, atol=1e-5)
    np.testing.assert_allclose(ff, (f + fm[:, :, ::-1]) / 2, atol=1e-5)
    np.testing.assert_allclose(flip.class_maps(x[0][:, ::-1]), flip.class_maps(x[0])[:, :, ::-1], atol=1e-5)
    assert Classifier(tta="flip", runtime="keras").classify(x) == flip.classify(x)


@pytest.mark.needs_data
def test_analyse_gives_everything_from_one_pass(lite, sea_photo):
    a = lite.analyse(sea_photo)
    assert "sea" in a.predicted and set(a.probabilities) == set(lite.labels)
    assert a.pixels.shape == (224, 224, 3) and a.pixels.dtype == np.uint8
    assert np.array_equal(a.pixels, lite.load(sea_photo))
    assert a.probabilities == lite.classify(a.pixels[None])[0]["probabilities"]
    assert a.embedding.shape == (2 * 1280,)
    np.testing.assert_allclose(np.stack([a.cams[l] for l in lite.labels]), lite.class_maps(a.pixels), atol=1e-6)
    assert max(a.image.size) <= 480


@pytest.mark.needs_data
def test_seed_cnn_keeps_the_gradient_path(seed_model_dir, sea_photo):
    """A head that is not pooling + dense gets Grad-CAM from TensorFlow's gradients, and LiteRT serves it too."""
    lite_seed = Classifier(seed_model_dir, runtime="litert")
    keras_seed = Classifier(seed_model_dir, runtime="keras")
    a = lite_seed.analyse(sea_photo)
    assert a.pixels.shape == (100, 100, 3) and a.embedding.shape == (512,)
    assert a.cams["sea"].shape == (47, 47) and 0 <= a.cams["sea"].min() and a.cams["sea"].max() <= 1
    k = keras_seed.analyse(sea_photo)
    np.testing.assert_allclose(list(a.probabilities.values()), list(k.probabilities.values()), atol=1e-4)


@pytest.mark.needs_data
def test_miml_photos_decode_exactly_as_a_full_decode(test_split):
    """Every MIML photo is under 8x the input size: the draft path never touches it (byte-identical inputs)."""
    dataset, _ = test_split
    for i in range(0, len(dataset.images), 10):
        path = dataset.path(i)
        with Image.open(path) as im:
            reference = np.asarray(letterbox(ImageOps.exif_transpose(im).convert("RGB"), 224))
        assert np.array_equal(load_image(path, 224), reference), path


@pytest.mark.needs_data
def test_large_jpegs_are_decoded_small_and_keep_their_labels(lite, test_split):
    """MIML test photos upscaled to phone sizes: a 1/8-scale DCT decode gives the labels of a full decode."""
    dataset, test_idx = test_split
    for n, i in enumerate(test_idx[:16]):
        with Image.open(dataset.path(i)) as im:
            longer = (4000, 4032, 5000, 6000)[n % 4]
            scale = longer / max(im.size)
            big = jpeg(
                im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
            )
        assert decoded_pixels(big, 224) < 700_000  # at most about 1000 x 700 decoded, never the 12+ megapixels
        drafted = load_image(big, 224)
        full = np.asarray(letterbox(decode(big, float("inf")), 224))
        a, b = lite.probabilities(np.stack([drafted, full]))
        assert np.array_equal(lite.decide(a), lite.decide(b)), (dataset.images[i], a, b)
        assert np.abs(a - b).max() < 0.05
        assert max(lite.analyse(big).image.size) <= 480  # and no full-size display copy


@pytest.mark.needs_data
@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_formats(client, lite, sea_photo, fmt):
    buf = io.BytesIO()
    Image.open(io.BytesIO(sea_photo)).save(buf, fmt, quality=90)
    photo = buf.getvalue()
    assert Image.open(io.BytesIO(photo)).format == fmt
    from_jpeg, converted = lite.probabilities(np.stack([lite.load(sea_photo), lite.load(photo)]))
    assert np.abs(from_jpeg - converted).max() < 0.05
    r = client.post(
        "/api/predict",
        data={"image": [(io.BytesIO(photo), f"phone.{fmt.lower()}")]},
        content_type="multipart/form-data",
    )
    assert r.status_code == 200 and "sea" in r.get_json()["results"][0]["predicted"]


@pytest.mark.needs_data
def test_upload_page_lists_the_phone_formats(client):
    html = client.get("/").get_data(as_text=True)
    assert "AVIF" in html and "HEIC" in html and ".heic" in html


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n%%EOF\n"


def other_format(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 0, 0)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.needs_data
@pytest.mark.parametrize(
    "name, make",
    [
        ("figure.eps", lambda: EPS),
        ("icon.ico", lambda: other_format("ICO")),
        ("old.pcx", lambda: other_format("PCX")),
        ("pic.ppm", lambda: other_format("PPM")),
    ],
)
def test_formats_outside_the_allow_list_are_415(client, name, make):
    r = client.post("/api/predict", data={"image": [(io.BytesIO(make()), name)]}, content_type="multipart/form-data")
    assert r.status_code == 415 and name in r.get_json()["error"] and "HEIC" in r.get_json()["error"]


@pytest.mark.needs_data
def test_concurrent_requests_equal_sequential_ones(lite, test_split):
    dataset, test_idx = test_split
    photos = [dataset.path(i).read_bytes() for i in test_idx[:24]]
    sequential = [lite.analyse(p) for p in photos]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lite.analyse, photos * 2))
        classified = list(pool.map(lambda p: lite.classify(lite.load(p)[None], batch_size=1)[0], photos))
    for s, c in zip(sequential * 2, concurrent):
        assert s.probabilities == c.probabilities and s.predicted == c.predicted
        assert all(np.array_equal(s.cams[l], c.cams[l]) for l in lite.labels)
    assert [c["probabilities"] for c in classified] == [s.probabilities for s in sequential]


def test_the_app_reaches_the_model_only_through_classifier():
    allowed = {
        "Classifier",
        "ImageError",
        "ImageTooLargeError",
        "UnsupportedImageError",
        "DataError",  # what Classifier.dataset raises
    }
    for path in (ROOT / "app").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("model") for a in node.names), path
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("model"):
                assert node.module == "model.inference" and {a.name for a in node.names} <= allowed, (path, node.module)


def test_the_app_reaches_user_data_only_through_the_workspace_api():
    allowed = {  # the labeller, the --feedback folder, the runs folder's datasets, models and jobs
        "Workspace",
        "WorkspaceError",
        "Feedback",
        "FeedbackLabelsError",
        "Registry",
        "RegistryError",
    }
    for path in (ROOT / "app").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("workspace") for a in node.names), path
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workspace"):
                assert node.module == "workspace" and {a.name for a in node.names} <= allowed, (path, node.module)


@pytest.mark.slow  # the app in a process decoding 40-megapixel PNGs
@pytest.mark.needs_data
def test_request_pixels_are_capped_and_the_worst_request_stays_under_1_gb(tmp_path, miml_data):
    """16 blank 16-bit 6324^2 PNGs (1.2 MB) are refused unread; the worst request within the limits
    (two 40-megapixel RGBA PNGs) raises the RSS, sampled every 2 ms while it runs, by less than 1 GB."""
    for name, mode, dtype in (("grey16.png", None, np.uint16), ("rgba.png", "RGBA", None)):
        im = Image.fromarray(np.zeros((6324, 6324), dtype)) if dtype else Image.new(mode, (6324, 6324))
        im.save(tmp_path / name)
    script = textwrap.dedent(f"""
        import io, threading, time
        from app import create_app
        client = create_app().test_client()
        def post(files):
            return client.post("/api/predict", data={{"image": [(io.BytesIO(d), n) for n, d in files]}},
                               content_type="multipart/form-data")
        grey = open({str(tmp_path / "grey16.png")!r}, "rb").read()
        rgba = open({str(tmp_path / "rgba.png")!r}, "rb").read()
        post([("warm.jpg", open({str(miml_data / "original" / "1.jpg")!r}, "rb").read())])
        rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
        before, samples, done = rss(), [], threading.Event()
        def sample():
            while not done.is_set():
                samples.append(rss())
                time.sleep(0.002)
        threading.Thread(target=sample).start()
        refused = post([(f"{{i}}.png", grey) for i in range(16)])
        worst = post([("a.png", rgba), ("b.png", rgba)])
        done.set()
        print(refused.status_code, worst.status_code, max(samples) - before, refused.get_json()["error"])
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    refused, worst, growth, message = r.stdout.split(maxsplit=3)
    assert (refused, worst) == ("413", "200"), r.stderr[-2000:]
    assert "pixels" in message and "fewer" in message
    assert int(growth) < 1024**3, int(growth) / 2**20


@pytest.mark.slow  # a flip-TTA ensemble and two CLI processes
@pytest.mark.needs_data
def test_each_tta_mode_has_its_own_validated_thresholds(plain, lite, sea_photo, tmp_path):
    """thresholds.json keeps the operating point tuned on validation for the other mode ("other_tta"), so
    a caller who wants flip TTA (twice the cost) gets thresholds made for it."""
    info = lite.card.tuning
    flip = Classifier(tta="flip", runtime="litert")
    assert lite.tta == plain.tta == "none"  # the shipped ensemble's own mode: one pass
    assert lite.thresholds == pytest.approx(info.thresholds) and lite.at_least_one == info.at_least_one
    assert flip.thresholds == pytest.approx(info.other_tta.thresholds)
    assert flip.at_least_one == info.other_tta.at_least_one
    assert flip.thresholds != lite.thresholds

    (tmp_path / "sea.jpg").write_bytes(sea_photo)
    for mode, classifier in (("none", lite), ("flip", flip)):
        r = run("model.predict", str(tmp_path / "sea.jpg"), "--json", "--tta", mode, "--runtime", "litert")
        (result,) = json.loads(r.stdout)
        want = classifier.classify(classifier.load(sea_photo)[None])[0]  # familiarity under its mode too
        assert {k: result[k] for k in ("probabilities", "predicted", "familiarity")} == want
