"""The parity gate (model/parity.py): OpenVINO in each precision this CPU has, and LiteRT, against Keras float32
on the 400 contract test photos (decoded, and run through Keras, once for the module); the gate itself; the
OpenVINO caches."""

import numpy as np
import pytest

from model.data import load_dataset, split
from model.inference import Classifier, choose_runtime
from model.openvino_runtime import cpu_precisions
from model.parity import Outputs, compare, outputs

SERVABLE = [p for p in cpu_precisions() if p != "int8"]  # int8 needs its own quantized IR (model.quantize)
# Photos a pass: each runtime keeps the buffers of its batch size while it lives (at 32 the module peaked at 2.5 GiB, at 8 at 1.5)
BATCH = 8


@pytest.fixture(scope="module")
def photos(miml_data):
    dataset = load_dataset(miml_data)
    test_idx = split(len(dataset.images))[2]
    return dataset.load_photos(test_idx, 224), dataset.labels[test_idx]


@pytest.fixture(scope="module")
def reference(photos):
    keras = Classifier(runtime="keras")
    return keras, outputs(keras, photos[0], BATCH)


@pytest.mark.slow
@pytest.mark.needs_data
@pytest.mark.parametrize("precision", SERVABLE)
def test_openvino_passes_the_parity_gate(photos, reference, precision):
    pixels, truth = photos
    keras, ref = reference
    candidate = Classifier(runtime="openvino", precision=precision)
    assert candidate.precision == precision and len(pixels) == 400
    parity = compare(keras, truth, ref, outputs(candidate, pixels, BATCH))
    assert parity.decisions == 2000
    assert parity.passes, parity
    if precision == "f32":  # exact: the same decisions, probabilities within float32 rounding
        assert parity.decisions_changed == 0 and parity.max_probability_diff < 1e-4, parity
    else:  # bf16 really runs in bf16: not bit-identical to Keras
        assert parity.max_probability_diff > 1e-4, parity


@pytest.mark.slow
@pytest.mark.needs_data
def test_litert_matches_keras_on_the_400_test_photos(photos, reference):
    pixels, _ = photos
    keras, ref = reference
    lite = Classifier(runtime="litert")
    got = outputs(lite, pixels, BATCH)
    assert got.probabilities.shape == (400, 5)
    assert np.abs(got.probabilities - ref.probabilities).max() < 1e-5
    assert np.array_equal(lite.decide(got.probabilities), keras.decide(ref.probabilities))
    np.testing.assert_allclose(got.embeddings, ref.embeddings, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.cams, ref.cams, atol=1e-3)  # maps scaled to 1: float32 noise reaches 1.4e-4
    features, embedding, _ = lite.forward(pixels[:4])
    assert features.shape == (4, 7, 7, 2 * 1280) and embedding.shape == (4, 2 * 1280)  # two members side by side
    np.testing.assert_allclose(features, keras.forward(pixels[:4])[0], atol=1e-4)
    np.testing.assert_allclose(embedding, features.mean(axis=(1, 2)), atol=1e-5)  # the pooled feature map


def test_auto_serves_openvino_in_the_cpus_best_precision_that_passes():
    """docs/runtime.md: OpenVINO bf16 beat LiteRT float32 on batches and passes the gate; OpenVINO float32 did not
    beat LiteRT, so a CPU without bf16 keeps LiteRT."""
    assert choose_runtime() == (("openvino", "bf16") if "bf16" in cpu_precisions() else ("litert", "f32"))
    assert choose_runtime("auto", "f32") == ("litert", "f32")  # what auto serves on a CPU without bf16
    assert choose_runtime("openvino") == ("openvino", "bf16" if "bf16" in cpu_precisions() else "f32")
    assert choose_runtime("litert") == ("litert", "f32")
    with pytest.raises(ValueError, match="f32 only"):
        choose_runtime("litert", "bf16")
    with pytest.raises(ValueError, match="unknown runtime"):
        choose_runtime("onnx")


def test_the_gate_fails_a_candidate_that_changes_three_decisions():
    """The gate is not vacuous: three flipped decisions, a moved embedding or a changed class map each fail it."""
    clf = Classifier(runtime="litert")  # the shipped model's thresholds
    rng = np.random.default_rng(0)
    n, labels = 40, len(clf.labels)
    truth = rng.integers(0, 2, (n, labels))
    ref = Outputs(rng.random((n, labels)).astype(np.float32), rng.random((n, 16)), rng.random((n, labels, 7, 7)))
    assert compare(clf, truth, ref, ref).passes
    thresholds = np.array([clf.thresholds[l] for l in clf.labels])
    flipped = ref.probabilities.copy()
    flipped[:3, 0] = np.where(flipped[:3, 0] >= thresholds[0], 0.0, 1.0)  # three decisions cross the threshold
    parity = compare(clf, truth, ref, Outputs(flipped, ref.embeddings, ref.cams))
    assert parity.decisions_changed >= 3 and not parity.passes
    moved = Outputs(ref.probabilities, rng.random((n, 16)), ref.cams)
    assert compare(clf, truth, ref, moved).similar_overlap < 0.95
    assert not compare(clf, truth, ref, Outputs(ref.probabilities, ref.embeddings, rng.random(ref.cams.shape))).passes


@pytest.mark.slow
@pytest.mark.needs_data
def test_openvino_caches_are_keyed_and_a_corrupt_ir_rebuilt(tmp_path, monkeypatch, seed_model_dir, sea_photo):
    """Two conversions, of the small seed CNN (the ensemble's take half a minute each): the cache is the same."""
    monkeypatch.setenv("MIML_CACHE", str(tmp_path))
    first = Classifier(seed_model_dir, runtime="openvino", precision="f32")
    (xml,) = (tmp_path / "openvino").glob("*.xml")
    from model.backbones.torch_legacy import sha256_of

    assert xml.stem == sha256_of(seed_model_dir / "model.keras")
    expected = first.classify(first.load(sea_photo)[None])
    assert list((tmp_path / "openvino" / f"{xml.stem}-compiled").iterdir())  # OpenVINO's compile cache
    bin_ = xml.with_suffix(".bin")
    size = bin_.stat().st_size
    bin_.write_bytes(bin_.read_bytes()[:1000])  # a half-written cache file
    second = Classifier(seed_model_dir, runtime="openvino", precision="f32")
    assert bin_.stat().st_size == size > 1_000_000
    assert second.classify(second.load(sea_photo)[None]) == expected
