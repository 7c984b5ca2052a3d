"""model.modeldir: every malformed file of a model directory is one ModelDirError naming it."""

import json
import shutil

import pytest

from model.modeldir import MAX_JSON_BYTES, SHIPPED_MODEL_DIR, ModelDirError, atomic_dir, read_model_dir

THRESHOLDS = json.loads((SHIPPED_MODEL_DIR / "thresholds.json").read_text())


@pytest.fixture()
def model_dir(tmp_path):
    """A copy of the shipped model directory, to alter."""
    return shutil.copytree(SHIPPED_MODEL_DIR, tmp_path / "model")


def with_thresholds(**changes):
    return json.dumps({**THRESHOLDS, **changes})


def test_shipped_model_directory_reads(model_dir):
    info = read_model_dir(model_dir)
    assert info.labels == ["desert", "mountains", "sea", "sunset", "trees"]
    assert info.thresholds.tolist() == pytest.approx([THRESHOLDS["thresholds"][l] for l in info.labels])
    assert info.at_least_one is THRESHOLDS["at_least_one"] is True  # chosen on validation (see thresholds.json)


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "thresholds.json",
            with_thresholds(thresholds={**THRESHOLDS["thresholds"], "sea": True}),
            "the threshold of 'sea' is true, not a number from 0 to 1",
        ),
        (
            "thresholds.json",
            with_thresholds(thresholds={**THRESHOLDS["thresholds"], "sea": 1.5}),
            "the threshold of 'sea' is 1.5, not a number from 0 to 1",
        ),
        (
            "thresholds.json",
            with_thresholds(labels=["desert", "desert", "sea", "sunset", "trees"]),
            "label 'desert' appears more than once in 'labels'",
        ),
        ("thresholds.json", with_thresholds(labels=["desert", 7]), "needs 'labels', a list of label names"),
        (
            "thresholds.json",
            with_thresholds(thresholds={"desert": 0.5}),
            "needs 'thresholds', one entry for each of the labels",
        ),
        ("thresholds.json", with_thresholds(at_least_one=1), "'at_least_one' must be true or false"),
        ("thresholds.json", with_thresholds(tta="rotate"), "'tta' must be one of none, flip"),
        ("thresholds.json", "[" * 200_000 + "]" * 200_000, r"not valid JSON \(nested too deeply\)"),
        ("metrics.json", '{"a": ' * 200_000 + "1" + "}" * 200_000, r"not valid JSON \(nested too deeply\)"),
        (
            "metrics.json",
            '{"training": {}, "validation": {}, "test": {}, "split": []}',
            "needs 'training', 'validation' and 'test'",
        ),
        ("thresholds.json", "{", r"not valid JSON \(Expecting property name"),
    ],
)
def test_malformed_json_is_one_error_naming_the_file(model_dir, name, content, message):
    (model_dir / name).write_text(content)
    with pytest.raises(ModelDirError, match=f"^{model_dir / name}: {message}") as error:
        read_model_dir(model_dir)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["thresholds.json", "metrics.json"])
def test_huge_json_is_refused_before_reading(model_dir, name):
    with open(model_dir / name, "wb") as f:
        f.truncate(600_000_000)  # sparse: reading it whole would take 600 MB
    with pytest.raises(
        ModelDirError, match=f"{model_dir / name}: 600,000,000 bytes, over the {MAX_JSON_BYTES:,}-byte limit"
    ):
        read_model_dir(model_dir)


def test_truncated_keras_file_is_not_reported_as_missing(model_dir):
    data = (model_dir / "model.keras").read_bytes()
    (model_dir / "model.keras").write_bytes(data[: len(data) // 2])
    info = read_model_dir(model_dir)  # the JSON files are fine; the network is read on demand
    with pytest.raises(
        ModelDirError, match=f"^{model_dir / 'model.keras'}: not a Keras archive \\(truncated or damaged\\)$"
    ):
        info.load_keras()


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("half-written")
            raise RuntimeError("killed")
    assert (out / "a").read_text() == "previous"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("new")
    assert (out / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .partial-write or .old left


def test_the_other_tta_operating_point_is_checked_and_read(model_dir):
    info = read_model_dir(model_dir)
    other = THRESHOLDS["other_tta"]["tta"]
    assert info.tta == "none" and other == "flip"  # the shipped ensemble runs one pass; flip is the other mode
    thresholds, at_least_one = info.operating_point(other)
    assert thresholds.tolist() == pytest.approx(list(THRESHOLDS["other_tta"]["thresholds"].values()))
    assert at_least_one is THRESHOLDS["other_tta"]["at_least_one"]
    bad = {**THRESHOLDS["other_tta"], "thresholds": {**THRESHOLDS["other_tta"]["thresholds"], "sea": 2}}
    (model_dir / "thresholds.json").write_text(with_thresholds(other_tta=bad))
    with pytest.raises(ModelDirError, match="the threshold of 'sea' is 2, not a number from 0 to 1"):
        read_model_dir(model_dir)
    (model_dir / "thresholds.json").write_text(with_thresholds(other_tta={**THRESHOLDS["other_tta"], "tta": "none"}))
    with pytest.raises(ModelDirError, match="'other_tta' must hold the thresholds of the other TTA mode"):
        read_model_dir(model_dir)
