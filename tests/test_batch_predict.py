"""Streaming batch prediction (model/batch.py) and its CLI outputs, on the tiny 3-label model."""

import csv
import itertools
import json
import shutil

import numpy as np
import pytest

from model.batch import expand, predict_paths
from model.predict import main as predict
from tests.helpers import TINY_LABELS, call


@pytest.fixture(scope="module")
def classifier(tiny_model):
    from model.inference import Classifier

    return Classifier(tiny_model)


@pytest.fixture()
def nested(tiny_dataset, tmp_path):
    """The 36 tiny photos spread over nested folders (one sorted between files), with a broken file among them."""
    photos = sorted((tiny_dataset / "original").glob("*.jpg"), key=lambda p: int(p.stem))
    for i, photo in enumerate(photos):
        folder = tmp_path / "photos" / ["", "a", "a/03 deeper", "b"][i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / f"{i:02d}.jpg")
    (tmp_path / "photos" / "a" / "05.5.jpg").write_text("not a photo")
    (tmp_path / "photos" / "notes.txt").write_text("not an image suffix, skipped")
    return tmp_path / "photos"


def expected(classifier, paths, batch_size=32):
    """Classifier.classify on the readable photos, keyed by path."""
    good = [p for p in paths if p.name != "05.5.jpg"]
    results = classifier.classify(np.stack([classifier.load(p) for p in good]), batch_size)
    return {str(p): r for p, r in zip(good, results)}


def test_expand_walks_folders_in_sorted_order(nested):
    assert list(expand([nested])) == sorted(p for p in nested.rglob("*.jpg"))  # the order of the old rglob-and-sort
    assert list(expand([nested / "00.jpg", nested / "b"]))[:2] == [nested / "00.jpg", nested / "b" / "03.jpg"]


@pytest.mark.slow  # the session's tiny model trains
@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_results_in_order_and_identical_to_classify(classifier, nested, tmp_path, batch_size):
    missing = tmp_path / "missing.jpg"
    paths = list(expand([nested])) + [missing]
    results = list(predict_paths(classifier, iter(paths), batch_size))
    assert [r["path"] for r in results] == [str(p) for p in paths]
    errors = {r["path"]: r["error"] for r in results if "error" in r}
    broken = str(nested / "a" / "05.5.jpg")
    assert set(errors) == {broken, str(missing)} and errors[str(missing)] == "No such file or directory"
    assert errors[broken].startswith("not an image format")
    want = expected(classifier, paths[:-1], batch_size)  # the same photos in the same batches
    assert {
        r["path"]: {"probabilities": r["probabilities"], "predicted": r["predicted"], "familiarity": r["familiarity"]}
        for r in results
        if "error" not in r
    } == want


@pytest.mark.slow  # the session's tiny model trains
def test_paths_are_streamed_not_collected(classifier, tiny_dataset):
    pulled = 0

    def endless():
        nonlocal pulled
        for path in itertools.cycle(sorted((tiny_dataset / "original").glob("*.jpg"))):
            pulled += 1
            yield path

    results = predict_paths(classifier, endless(), batch_size=4)
    assert len(list(itertools.islice(results, 5))) == 5
    results.close()
    assert pulled <= 2 * 4 + 2 * 4  # two batches used, two more batches' worth decoded ahead


@pytest.mark.slow  # the session's tiny model trains
def test_csv_and_json_files(classifier, nested, tmp_path):
    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    r = call(predict, nested, "--model", classifier.info.path, "--csv", out_csv, "--json-file", out_json)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"36 photos predicted, 1 could not be read (see {out_csv})"
    assert r.stdout == ""
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    paths = list(expand([nested]))
    assert [row["path"] for row in rows] == [str(p) for p in paths]
    broken = rows[[p.name for p in paths].index("05.5.jpg")]
    assert broken["error"].startswith("not an image format") and broken["predicted"] == broken["red"] == ""
    want = expected(classifier, paths)
    for row in rows:
        if row is not broken:
            assert row["error"] == ""
            assert {l: float(row[l]) for l in TINY_LABELS} == want[row["path"]]["probabilities"]
            assert row["predicted"].split() == want[row["path"]]["predicted"]
    listed = json.loads(out_json.read_text())
    assert [x["path"] for x in listed] == [row["path"] for row in rows]
    assert [x.get("probabilities") for x in listed] == [want.get(row["path"], {}).get("probabilities") for row in rows]
