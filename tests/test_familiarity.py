""" "I don't know this photo": the familiarity score and the unfamiliar flag, in the API, on the upload card, in
the batch CSV; the at-least-one rule forces no label on an unfamiliar photo."""

import csv
import io

import numpy as np
import pytest

from model.familiarity import TrainingPhotos
from tests.helpers import make_non_scenes


def png(image):
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_the_threshold_is_the_validation_photos_first_percentile_and_survives_the_file(tmp_path):
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    train = centre + 0.3 * rng.normal(size=(200, 64))
    val = centre + 0.3 * rng.normal(size=(100, 64))
    photos = TrainingPhotos.fit(train, val)
    scores = photos.scores(val)
    assert photos.threshold == pytest.approx(np.percentile(scores, 1), abs=1e-4)
    assert 1 <= (scores < photos.threshold).sum() <= 2  # 1% of 100
    (tmp_path / "familiarity.npz").write_bytes(photos.to_bytes())
    read = TrainingPhotos.read(tmp_path)
    assert read.threshold == photos.threshold
    far = -centre + 0.3 * rng.normal(size=64)  # the opposite direction: nothing like the training photos
    near = train[3]
    judged = read.judge(np.stack([far, near]))
    assert judged[0].unfamiliar and judged[0].score < 0 and not judged[1].unfamiliar and judged[1].score > 0.99
    assert TrainingPhotos.read(tmp_path / "none") is None


@pytest.mark.needs_data
def test_non_scenes_are_flagged_and_get_no_forced_label(client, scenes, sea_photo):
    """The shipped model's at-least-one rule is on, yet an unfamiliar photo may come back with no label."""
    assert scenes.classifier.at_least_one and scenes.classifier.training_photos is not None
    made = make_non_scenes(n_each=4)
    r = client.post(
        "/api/predict",
        content_type="multipart/form-data",
        data={"image": [(io.BytesIO(png(image)), f"{kind}-{i}.png") for i, (kind, image) in enumerate(made)]},
    )
    assert r.status_code == 200
    results = r.get_json()["results"]
    flagged = [x["familiarity"]["unfamiliar"] for x in results]
    assert sum(flagged) >= 0.9 * len(made)  # benchmarks/familiarity.py measures it on more
    assert all(flagged[4:])  # text, flat colours and noise: every one
    odd = results[4:]
    empty = [x for x in odd if not x["predicted"]]
    assert empty  # some have no label above its threshold and are not forced one
    for x in empty:
        assert max(x["probabilities"][l] - scenes.thresholds[l] for l in scenes.labels) < 0

    sea = client.post(
        "/api/predict", content_type="multipart/form-data", data={"image": (io.BytesIO(sea_photo), "sea.jpg")}
    ).get_json()["results"][0]
    assert (
        sea["familiarity"]["unfamiliar"] is False
        and sea["familiarity"]["score"] > scenes.classifier.training_photos.threshold
    )
    assert "sea" in sea["predicted"]
    # thresholds are rounded as the probabilities are, with no float32 noise
    assert all(v == round(v, 4) for v in r.get_json()["thresholds"].values())


@pytest.mark.needs_data
def test_the_upload_card_says_so_in_a_sentence(client, sea_photo):
    noise = png(make_non_scenes(n_each=4)[-1][1])
    html = client.post(
        "/",
        content_type="multipart/form-data",
        data={"image": [(io.BytesIO(noise), "noise.png"), (io.BytesIO(sea_photo), "sea.jpg")]},
    ).get_data(as_text=True)
    assert html.count("data-unfamiliar") == 1  # the noise, not the sea
    assert "unlike anything the model was trained on" in html


@pytest.mark.needs_data
def test_the_batch_csv_has_the_familiarity_columns(tmp_path, sea_photo, capsys):
    from model.predict import main

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a-sea.jpg").write_bytes(sea_photo)
    make_non_scenes(n_each=4)[8][1].save(tmp_path / "photos" / "b-text.png")
    with pytest.raises(SystemExit) as done:
        main([str(tmp_path / "photos"), "--csv", str(tmp_path / "out.csv")])
    assert done.value.code == 0
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert list(rows[0])[-3:] == ["familiarity", "unfamiliar", "error"]
    assert [r["unfamiliar"] for r in rows] == ["0", "1"]
    assert float(rows[0]["familiarity"]) > float(rows[1]["familiarity"])
