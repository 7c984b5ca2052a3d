"""model.export: the SavedModel and TF Lite exports of the shipped model, against the Keras path.

Measured with the shipped model on the 400 contract test photos (CPU, TF 2.21):
- SavedModel (bytes in, in-graph preprocessing) vs Keras on preprocess.load_image: largest
  |probability difference| 0.0 (the in-graph letterbox reproduces Pillow's pixels exactly);
- TF Lite float16: largest difference 0.008, mean 0.0002, no predicted label changed;
- TF Lite int8 (full-integer, 100 calibration photos): largest 0.31, mean 0.009; 22 of the 400
  photos change a predicted label, Hamming loss 0.0660 vs 0.0635.
The tolerances below leave room for a retrained model.
"""

import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from model.data import load_dataset, split
from model.export import TFLITE_FILES, ExportError, check_output, main
from model.modeldir import SHIPPED_MODEL_DIR
from model.preprocess import load_image
from tests.helpers import ROOT

SAVED_MODEL_TOLERANCE = 2e-3
FLOAT16_TOLERANCE = 0.02  # measured 0.008
INT8_MEAN_TOLERANCE = 0.03  # measured 0.009
INT8_MAX_TOLERANCE = 0.5  # measured 0.31; a broken input scaling gives ~1
INT8_DECISION_AGREEMENT = 0.95  # share of (photo, label) decisions equal to Keras's; measured 0.99
TFLITE_PHOTOS = 200


@pytest.fixture(scope="module")
def exported(miml_data, tmp_path_factory):
    """The shipped model exported once in both formats, through the CLI's main()."""
    root = tmp_path_factory.mktemp("export")
    main(["--format", "saved_model", "--out", str(root / "saved_model")])
    # 25 calibration photos, not the default 100 (19 CPU-s less): on the first 200 test photos, int8 against Keras then
    # differs by at most 0.20 (mean 0.0063) and agrees on 99.8% of the decisions
    main(["--format", "tflite", "--out", str(root / "tflite"), "--data", str(miml_data), "--calibration", "25"])
    return root


@pytest.fixture(scope="module")
def loaded(exported):
    """The SavedModel export loaded with TensorFlow alone (no Keras, no project code)."""
    import tensorflow as tf

    return tf.saved_model.load(str(exported / "saved_model"))


@pytest.fixture(scope="module")
def reference(miml_data):
    """The Keras path on the contract test photos: classifier, file bytes, pixels, probabilities."""
    from model.inference import Classifier

    dataset = load_dataset(miml_data)
    test_idx = split(len(dataset.images))[2]
    classifier = Classifier(runtime="litert")  # float32, as exact as Keras
    raw = [dataset.path(i).read_bytes() for i in test_idx]
    pixels = dataset.load_photos(test_idx, classifier.size)
    return classifier, raw, pixels, classifier.probabilities(pixels), dataset.labels[test_idx]


def _names(classifier, decisions):
    return [[l for l, on in zip(classifier.labels, row) if on] for row in decisions]


@pytest.mark.slow  # exports the shipped model (SavedModel, TF Lite with int8 calibration)
@pytest.mark.needs_data
def test_export_directories_are_complete(exported):
    assert (exported / "saved_model" / "saved_model.pb").is_file()
    assert {p.name for p in (exported / "tflite").iterdir()} == {*TFLITE_FILES.values(), "thresholds.json"}
    for fmt in ("saved_model", "tflite"):
        assert (exported / fmt / "thresholds.json").read_bytes() == (SHIPPED_MODEL_DIR / "thresholds.json").read_bytes()
    leftovers = [p.name for p in exported.iterdir() if p.name.endswith((".partial-write", ".old"))]
    assert leftovers == []


@pytest.mark.slow  # exports the shipped model (SavedModel, TF Lite with int8 calibration)
@pytest.mark.needs_data
def test_serving_signature_takes_bytes_and_returns_batch_major_outputs(loaded, reference):
    import tensorflow as tf

    classifier = reference[0]
    serve = loaded.signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    assert list(inputs) == ["image_bytes"]
    assert inputs["image_bytes"].dtype == tf.string and inputs["image_bytes"].shape.as_list() == [None]
    n = len(classifier.labels)
    outputs = serve.structured_outputs
    assert set(outputs) == {"probabilities", "labels", "predicted"}
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["labels"].dtype == outputs["predicted"].dtype == tf.string
    for spec in outputs.values():  # batch first everywhere: TF Serving's row ("instances") JSON format needs it
        assert spec.shape.as_list() == [None, n]


@pytest.mark.slow  # exports the shipped model (SavedModel, TF Lite with int8 calibration)
@pytest.mark.needs_data
def test_saved_model_matches_keras_on_the_contract_test_photos(loaded, reference):
    import tensorflow as tf

    classifier, raw, pixels, keras_probs, _ = reference
    serve = loaded.signatures["serving_default"]
    # 16 photos a call: 50 at once raised the process's peak by about 1 GB (measured: 3.1 GB -> 4.0 GB)
    outs = [serve(image_bytes=tf.constant(raw[i : i + 16])) for i in range(0, len(raw), 16)]
    probs = np.concatenate([o["probabilities"].numpy() for o in outs])
    labels = np.concatenate([o["labels"].numpy() for o in outs])
    predicted = np.concatenate([o["predicted"].numpy() for o in outs])

    diff = float(np.abs(probs - keras_probs).max())
    print(f"SavedModel vs Keras on {len(raw)} test photos: largest |probability difference| {diff:.2e}")
    assert diff < SAVED_MODEL_TOLERANCE

    assert (labels == np.array([l.encode() for l in classifier.labels])).all()
    got = []
    for row in predicted:
        names = [s.decode() for s in row]
        filled = [s for s in names if s]
        assert names == filled + [""] * (len(names) - len(filled))  # names first, in label order, then padding
        got.append(filled)
    expected = _names(classifier, classifier.decide(keras_probs))
    # A photo may only differ where a probability sits within the measured difference of its threshold
    # (or, with "at least one label", of the runner-up), which a difference of 0 rules out entirely.
    margin = max(diff, 1e-7)
    top2 = np.sort(keras_probs, axis=1)[:, -2:]
    thresholds = np.array([classifier.thresholds[l] for l in classifier.labels])
    borderline = (np.abs(keras_probs - thresholds) <= margin).any(axis=1) | (top2[:, 1] - top2[:, 0] <= margin)
    disagree = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e and not borderline[i]]
    assert disagree == [], [(i, got[i], expected[i]) for i in disagree[:5]]


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(image):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.slow  # exports the shipped model (SavedModel, TF Lite with int8 calibration)
@pytest.mark.needs_data
def test_in_graph_preprocessing_reproduces_pillow(loaded, reference):
    import tensorflow as tf

    classifier, raw, pixels = reference[:3]
    np.testing.assert_array_equal(loaded.preprocess(tf.constant(raw[:40])).numpy(), pixels[:40])

    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8))
    rgba = np.dstack([rng.integers(0, 256, (50, 70, 3)), rng.integers(0, 256, (50, 70))]).astype(np.uint8)
    cases = {
        # tall and large: Pillow's reduce() step, then the vertical pass first
        "tall 700x1500 PNG": _png(noise.resize((700, 1500), Image.Resampling.BILINEAR)),
        "phone-sized 2016x1512 JPEG (decoded at 1/4 scale)": _jpeg(
            noise.resize((2016, 1512), Image.Resampling.BILINEAR)
        ),
        "12 MP 4000x3000 JPEG (decoded at 1/8 scale)": _jpeg(noise.resize((4000, 3000), Image.Resampling.BILINEAR)),
        "transparent RGBA PNG": _png(Image.fromarray(rgba, "RGBA")),
        "greyscale PNG": _png(noise.convert("L")),
    }
    for name, data in cases.items():
        got = loaded.preprocess(tf.constant([data])).numpy()[0]
        np.testing.assert_array_equal(got, load_image(data, classifier.size), err_msg=name)


@pytest.mark.slow  # exports the shipped model (SavedModel, TF Lite with int8 calibration)
@pytest.mark.needs_data
def test_saved_model_refuses_non_images_and_decompression_bombs(loaded):
    import tensorflow as tf

    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        serve(image_bytes=tf.constant([b"not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="too many pixels"):
        serve(image_bytes=tf.constant([_png(Image.new("L", (8000, 6000)))]))


def _run_tflite(path, pixels):
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice (ai_edge_litert)
        interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert list(inp["shape"]) == [1, *pixels.shape[1:]]
    scale, zero_point = inp["quantization"]
    probs = []
    for image in pixels:
        if inp["dtype"] == np.float32:
            x = image.astype(np.float32)
        else:
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(image / scale + zero_point), info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        probs.append(interpreter.get_tensor(out["index"])[0].copy())
    return inp, np.array(probs)


@pytest.mark.slow  # exports the shipped model (SavedModel, TF Lite with int8 calibration)
@pytest.mark.needs_data
def test_tflite_float16_agrees_with_keras(exported, reference):
    classifier, _, pixels, keras_probs, _ = reference
    inp, probs = _run_tflite(exported / "tflite" / TFLITE_FILES["float16"], pixels[:TFLITE_PHOTOS])
    assert inp["dtype"] == np.float32
    diff = np.abs(probs - keras_probs[:TFLITE_PHOTOS])
    print(f"TF Lite float16 vs Keras on {TFLITE_PHOTOS} photos: largest {diff.max():.4f}, mean {diff.mean():.5f}")
    assert diff.max() < FLOAT16_TOLERANCE


@pytest.mark.slow  # exports the shipped model (SavedModel, TF Lite with int8 calibration)
@pytest.mark.needs_data
def test_tflite_int8_agrees_with_keras(exported, reference):
    classifier, _, pixels, keras_probs, truth = reference
    inp, probs = _run_tflite(exported / "tflite" / TFLITE_FILES["int8"], pixels[:TFLITE_PHOTOS])
    assert inp["dtype"] == np.uint8  # takes preprocessed pixels as they come
    diff = np.abs(probs - keras_probs[:TFLITE_PHOTOS])
    ours, theirs = classifier.decide(probs), classifier.decide(keras_probs[:TFLITE_PHOTOS])
    agreement = float((ours == theirs).mean())
    print(
        f"TF Lite int8 vs Keras on {TFLITE_PHOTOS} photos: largest {diff.max():.4f}, mean {diff.mean():.5f}, "
        f"label decisions agreeing {agreement:.4f}, input quantization {inp['quantization']}"
    )
    assert diff.mean() < INT8_MEAN_TOLERANCE and diff.max() < INT8_MAX_TOLERANCE
    assert agreement >= INT8_DECISION_AGREEMENT
    truth = truth[:TFLITE_PHOTOS]
    assert abs((ours != truth).mean() - (theirs != truth).mean()) <= 0.02  # Hamming loss


# ---------------------------------------------------------------- the CLI's errors


def test_missing_model_directory_is_one_line_without_traceback(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.export",
            "--model",
            "/nonexistent/model",
            "--format",
            "saved_model",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert r.stderr == "error: /nonexistent/model: model directory not found\n"
    assert list(tmp_path.iterdir()) == []


def _main_error(*args):
    """main()'s exit message: Python prints a string exit code as one line on stderr and exits with 1."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert isinstance(exit_info.value.code, str) and "\n" not in exit_info.value.code
    return exit_info.value.code


def test_bad_format():
    message = _main_error("--format", "onnx", "--out", "/tmp/never-written")
    assert message.startswith("error: argument --format: invalid choice: 'onnx'")


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    message = _main_error("--format", "saved_model", "--out", str(blocker / "out"))
    assert message.startswith(f"error: {blocker / 'out'}: cannot write the export there")


def test_tflite_needs_a_dataset(tmp_path, monkeypatch):
    monkeypatch.delenv("MIML_DATA", raising=False)
    message = _main_error("--format", "tflite", "--out", str(tmp_path / "out"))
    assert message.startswith("error: no dataset given")
    assert list(tmp_path.iterdir()) == []


def test_output_is_only_replaced_when_it_holds_an_earlier_export(tmp_path):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "todo.txt").write_text("keep me")
    with pytest.raises(ExportError, match="is not an earlier export"):
        check_output(precious)
    assert (precious / "todo.txt").read_text() == "keep me"
    as_file = tmp_path / "file"
    as_file.write_text("")
    with pytest.raises(ExportError, match="not a directory"):
        check_output(as_file)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "thresholds.json").write_text("{}")
    (earlier / TFLITE_FILES["int8"]).write_bytes(b"")
    check_output(earlier)  # may be replaced
    check_output(tmp_path / "new")
