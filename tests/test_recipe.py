"""The training recipe's parts that model.train's options switch on: upload-like augmentation, mixup, slower
early layers, and the cross-validation folds (model.crossval runs them end to end)."""

import colorsys
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from model.data import fold_split, load_dataset
from model.preprocess import content_box, load_image
from model.train import layerwise_adam, mixup, train_batches, upload_augment

SIZE = 96


def augmented(photo, box, seeds):
    return [upload_augment(tf, photo, box, tf.constant([7, s], tf.int64), SIZE).numpy() for s in seeds]


def test_upload_augmentation_crops_any_aspect_letterboxes_and_keeps_hues(tmp_path):
    # A 3:2 photo of one orange (sunset-like) hue with a darker stripe, letterboxed at 1.5x as training loads it.
    pixels = np.zeros((200, 300, 3), np.uint8)
    pixels[:] = (230, 120, 40)
    pixels[80:120] = (120, 60, 20)
    from PIL import Image

    Image.fromarray(pixels).save(tmp_path / "p.png")
    source = round(1.5 * SIZE)
    photo = tf.constant(load_image(tmp_path / "p.png", source), tf.float32)
    box = tf.constant(content_box(tmp_path / "p.png", source), tf.float32)
    assert np.allclose(box.numpy(), [(144 - 96) // 2 / 144, 0, ((144 - 96) // 2 + 96) / 144, 1])
    outs = augmented(photo, box, range(40))
    aspects, hues = [], []
    for out in outs:
        assert out.shape == (SIZE, SIZE, 3) and 0 <= out.min() and out.max() <= 255
        content = np.abs(out - 127).sum(axis=2) > 3  # anything but the grey bands
        rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
        assert SIZE in (np.ptp(rows) + 1, np.ptp(cols) + 1)  # letterboxed: the longer side fills the input
        aspects.append((np.ptp(cols) + 1) / (np.ptp(rows) + 1))
        r, g, b = out[content].mean(axis=0) / 255
        hues.append(colorsys.rgb_to_hsv(r, g, b)[0] * 360)
    assert min(aspects) < 1 and max(aspects) > 2  # portrait crops and panorama strips, from a 3:2 photo
    assert np.allclose(hues, colorsys.rgb_to_hsv(230 / 255, 120 / 255, 40 / 255)[0] * 360, atol=4)  # still orange
    # a pure function of its key: the same key gives the same photo, another key another one
    assert np.array_equal(augmented(photo, box, [3])[0], outs[3]) and not np.array_equal(outs[3], outs[4])


@pytest.mark.needs_data
def test_upload_augmentation_never_crops_into_the_grey_bands(miml_data):
    path = miml_data / "original" / "5.jpg"  # a portrait photo: grey bands left and right
    source = round(1.5 * SIZE)
    box = tf.constant(content_box(path, source), tf.float32)
    photo = tf.constant(load_image(path, source), tf.float32)
    for out in augmented(photo, box, range(12)):
        content = np.abs(out - 127).sum(axis=2) > 3
        rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
        # a crop that reached into the bands would bring a grey margin inside the content's bounding box
        inner = out[rows[0] + 2 : rows[-1] - 1, cols[0] + 2 : cols[-1] - 1]
        assert (np.abs(inner - 127).sum(axis=2) <= 3).mean() < 0.02


def test_mixup_blends_photos_and_labels_by_the_same_weight():
    x = tf.constant(np.stack([np.zeros((4, 4, 3)), np.full((4, 4, 3), 100.0)]), tf.float32)
    y = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    xm, ym = mixup(tf, x, y, tf.constant([1, 2], tf.int64), 0.4)
    weights = 1 - xm.numpy()[:, 0, 0, 0] / 100  # the share of photo 0 in each blend
    assert np.allclose(ym.numpy()[:, 0], weights, atol=1e-6) and np.allclose(ym.numpy().sum(axis=1), 1)
    assert np.allclose(xm.numpy(), xm.numpy()[:, :1, :1, :1])  # a blend, not a patchwork


def test_train_batches_with_mixup_give_soft_labels_and_keep_the_batch_shape():
    x = tf.constant(np.random.default_rng(0).integers(0, 255, (10, 16, 16, 3)), tf.uint8)
    y = tf.constant(np.eye(2)[np.arange(10) % 2], tf.float32)
    batches, steps = train_batches(tf, x, y, 4, 1, seed=0, mixup_alpha=0.4)
    xb, yb = next(iter(batches))
    assert steps == 3 and xb.shape == (4, 16, 16, 3)
    assert ((yb.numpy() > 0.01) & (yb.numpy() < 0.99)).any()


def test_layerwise_adam_moves_the_slow_layers_by_the_factor():
    import keras

    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="stem_conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="probabilities")(x))
    before = [w.copy() for w in model.get_weights()]
    model.compile(layerwise_adam(keras, 0.1, ("stem_",), 0.01), "mse")
    model.fit(np.ones((8, 3)), np.zeros((8, 1)), epochs=1, batch_size=8, verbose=0)  # one Adam step
    moved = [np.abs(a - b).max() for a, b in zip(model.get_weights(), before)]
    # Adam's first step moves every weight by about the learning rate, whatever its gradient's size
    assert moved[0] == pytest.approx(0.001, rel=0.05) and moved[2] == pytest.approx(0.1, rel=0.05)


@pytest.mark.needs_data
def test_cross_validation_folds_partition_the_photos_and_are_stratified(miml_data):
    labels = load_dataset(miml_data).labels
    tests = []
    for k in range(5):
        train, val, test = fold_split(labels, 5, k)
        assert len(test) == 400 and len(val) == 320 and len(train) == 1280
        assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
        assert np.abs(labels[test].mean(axis=0) - labels.mean(axis=0)).max() < 0.01
        assert np.abs(labels[val].mean(axis=0) - labels.mean(axis=0)).max() < 0.01
        tests.append(test)
    assert sorted(np.concatenate(tests)) == list(range(len(labels)))  # every photo tested exactly once
    assert np.array_equal(fold_split(labels, 5, 2)[2], tests[2])  # the same folds every time
    with pytest.raises(ValueError, match="fold 5 is not one of 0..4"):
        fold_split(labels, 5, 5)


@pytest.mark.slow  # trains two folds (of the seed CNN: a third of EfficientNet-Lite0's CPU time at 64 pixels)
def test_crossval_trains_every_fold_reports_the_literature_metrics_and_resumes(
    tiny_dataset, tiny_model, tmp_path, capsys
):
    from model.crossval import main

    out = tmp_path / "cv"
    args = ["--data", str(tiny_dataset), "--out", str(out), "--folds", "2", "--arch", "seed-cnn", "--epochs", "1"]
    recorded = tmp_path / "model"
    shutil.copytree(tiny_model, recorded)
    main(args + ["--record-in", str(recorded)])
    result = json.loads((out / "crossval.json").read_text())
    assert json.loads((recorded / "metrics.json").read_text())["crossval"] == result  # for its model page
    assert result["folds"] == 2 and result["test_photos"] == 36  # each photo tested once
    folds = [json.loads((out / f"fold{k}" / "metrics.json").read_text()) for k in (1, 2)]
    assert [f["split"]["fold"] for f in folds] == ["1/2", "2/2"]
    assert not set(folds[0]["split"]["test_images"]) & set(folds[1]["split"]["test_images"])
    for key in ("hamming_loss", "one_error", "coverage_normalised", "ranking_loss", "average_precision"):
        values = [f["test"][key] for f in folds]
        assert result["metrics"][key]["folds"] == values
        assert result["metrics"][key]["mean"] == pytest.approx(np.mean(values))
    table = capsys.readouterr().out
    assert "| Hamming loss |" in table and "0.148" in table and "| average precision |" in table
    stamp = (out / "fold1" / "model.keras").stat().st_mtime_ns
    main(args)  # finished folds are kept, not trained again
    assert (out / "fold1" / "model.keras").stat().st_mtime_ns == stamp


def test_crossval_refuses_options_it_sets_itself(tmp_path, capsys):
    from model.crossval import main

    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--fold", "1/5"])
    assert "set by model.crossval" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=f"error: {tmp_path / 'nothing'}: model directory not found"):
        main(["--out", str(tmp_path / "cv"), "--record-in", str(tmp_path / "nothing")])
    assert not (tmp_path / "cv").exists()  # refused before any fold
