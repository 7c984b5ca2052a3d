"""Quick training: a logistic head on the frozen backbone's pooled embeddings.

    python -m model.quick --data DIR --out DIR [--backbone shipped|imagenet|MODEL_DIR] [--cache DIR] [--split-seed 100]

The protocol is model.train's: the same split (fixed seed), the regularisation strength and the thresholds
chosen on validation, the test photos used once, for the report. The result is an ordinary model directory:
the backbone's layers (the shipped model's, fine-tuned from ImageNet) and a Dense sigmoid head whose weights
are the logistic regressions' coefficients, which is exactly what the pooled embedding feeds in the network
(dropout is off at inference), so Classifier, the gallery and evaluation read it unchanged.
Embeddings are cached per photo (its sha256) and per backbone in `--cache`.
"""

import argparse
import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from model.data import CONTRACT_SPLIT_SEED, DataError, check_labels_vary, load_dataset, split
from model.familiarity import FILE as FAMILIARITY_FILE
from model.familiarity import TrainingPhotos
from model.metrics import evaluate, format_table
from model.modeldir import (
    SHIPPED_MODEL_DIR,
    ModelCard,
    ModelDirError,
    Split,
    Training,
    Tuning,
    read_model_dir,
    write_model_dir,
)
from model.thresholds import choose_thresholds

C_GRID = [0.01, 0.03, 0.1, 0.3, 1.0]  # inverse regularisation strengths tried; the best validation log loss wins


def cached_embeddings(classifier, paths, cache, progress=None, batch_size=32):
    """(n, d) embeddings of the photos at `paths` under `classifier`'s backbone, each computed once and cached
    in `cache`/<model sha256 prefix>/<photo sha256>.npy. `progress(done fraction, seconds left)` after each batch."""
    folder = Path(cache) / classifier.info.sha256[:16]
    folder.mkdir(parents=True, exist_ok=True)
    keys = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    todo = [i for i, k in enumerate(keys) if not (folder / f"{k}.npy").is_file()]
    started = time.time()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        for i, e in zip(chunk, classifier.embeddings(np.stack([classifier.load(paths[i]) for i in chunk]))):
            tmp = folder / f"{keys[i]}.{id(e)}.tmp.npy"
            np.save(tmp, e.astype(np.float32))
            tmp.replace(folder / f"{keys[i]}.npy")
        done = start + len(chunk)
        if progress:
            progress(done / len(todo), (time.time() - started) / done * (len(todo) - done))
    return np.stack([np.load(folder / f"{k}.npy") for k in keys])


def fit_head(x_train, y_train, x_val, y_val, labels, progress=None):
    """Per label, a logistic regression on standardised embeddings, C chosen by validation log loss.
    `progress(labels done, seconds left)` after each label.

    Returns (kernel (d, labels), bias (labels,), the C of each label) on the raw embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    check_labels_vary(y_train, labels)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    zt, zv = (x_train - mean) / std, (x_val - mean) / std
    kernel, bias, chosen = np.zeros((x_train.shape[1], len(labels)), np.float32), np.zeros(len(labels), np.float32), []
    started = time.time()
    for j in range(len(labels)):
        fits = [LogisticRegression(C=c, max_iter=2000).fit(zt, y_train[:, j]) for c in C_GRID]
        losses = [log_loss(y_val[:, j], f.predict_proba(zv)[:, 1], labels=[0, 1]) for f in fits]
        best = fits[int(np.argmin(losses))]
        kernel[:, j] = best.coef_[0] / std  # fold the standardisation into the weights
        bias[j] = best.intercept_[0] - float((best.coef_[0] * mean / std).sum())
        chosen.append(C_GRID[int(np.argmin(losses))])
        if progress:
            progress(j + 1, (time.time() - started) / (j + 1) * (len(labels) - j - 1))
    return kernel, bias, chosen


def head_probabilities(embeddings, kernel, bias):
    from scipy.special import expit  # the logistic function without overflow warnings

    return expit(embeddings @ kernel + bias).astype(np.float32)


def build_quick_model(backbone, labels, kernel, bias):
    """The backbone's network (any architecture with a `dropout` layer before its head: a single model or an
    ensemble) with a new `probabilities` layer carrying (kernel, bias)."""
    import keras

    base = backbone.model
    head = keras.layers.Dense(len(labels), activation="sigmoid", name="probabilities")
    model = keras.Model(base.inputs, head(base.get_layer("dropout").output), name=base.name)
    head.set_weights([kernel, bias])
    return model


def imagenet_backbone(cache, arch="efficientnet-lite0"):
    """A model directory holding `arch` with its ImageNet weights (the head is a placeholder, never used),
    written once under `cache`: the backbone for photos the shipped model may have been fine-tuned on."""
    folder = Path(cache) / f"imagenet-{arch}"
    if not (folder / "model.keras").is_file():
        from model.network import build_model

        model = build_model(arch, ["unused"])
        training = Training(architecture=arch, input_size=model.input_shape[1], backbone="ImageNet weights only")
        card = ModelCard(Tuning(labels=["unused"], thresholds={"unused": 0.5}), training)
        write_model_dir(folder, model, card, [], [], [], lambda path: None)
    return folder


def train_quick(data, out, cache, backbone="shipped", split_seed=CONTRACT_SPLIT_SEED, progress=None):
    """Train on the dataset in `data` and write the model directory `out`; returns its card.
    `backbone`: "shipped" (fine-tuned on MIML), "imagenet", or a model directory.
    `progress(fraction, message, seconds left or None)` reports as it goes."""
    from model.inference import Classifier, cached_flatbuffer, read_model_dir

    report = progress or (lambda *a: None)
    started = time.time()
    dataset = load_dataset(data)
    labels = dataset.label_names
    folder = {"shipped": SHIPPED_MODEL_DIR, "imagenet": None}.get(backbone, backbone) or imagenet_backbone(cache)
    converted = cached_flatbuffer(read_model_dir(folder).sha256) is not None
    report(
        0.02,
        "step 1 of 4: loading the backbone"
        + ("" if converted else " and converting it for LiteRT (once per backbone, about a minute)"),
        None,
    )
    # One pass a photo, no test-time augmentation: the head must see the embeddings the quick model computes.
    backbone = Classifier(folder, tta="none", precision="f32")  # float32, as model.retune: stored numbers exact
    train_idx, val_idx, test_idx = split(len(dataset.images), split_seed)
    paths = [dataset.path(i) for i in range(len(dataset.images))]
    x = cached_embeddings(
        backbone,
        paths,
        cache,
        lambda f, left: report(
            0.1 + 0.7 * f, f"step 2 of 4: embeddings, {round(f * 100)}% of the photos not seen before", left
        ),
    )
    y = dataset.labels
    report(0.8, f"step 3 of 4: fitting the logistic head, 0 of {len(labels)} labels (C chosen on validation)", None)
    kernel, bias, chosen = fit_head(
        x[train_idx],
        y[train_idx],
        x[val_idx],
        y[val_idx],
        labels,
        lambda done, left: report(
            0.8 + 0.15 * done / len(labels),
            f"step 3 of 4: fitting the logistic head, {done} of {len(labels)} labels",
            left,
        ),
    )
    val_probs, test_probs = (head_probabilities(x[idx], kernel, bias) for idx in (val_idx, test_idx))
    thresholds, at_least_one, tuning = choose_thresholds(labels, y[val_idx], val_probs, split_seed=split_seed)
    report(0.95, "step 4 of 4: writing the model directory", None)
    model = build_quick_model(backbone, labels, kernel, bias)
    test_images = [dataset.images[i] for i in test_idx]
    training = Training(
        mode="quick",
        architecture=backbone.card.training.architecture,
        input_size=backbone.size,
        parameters=int(model.count_params()),
        backbone=backbone.name,  # a model id: the shipped model, imagenet-ARCH, or a runs folder's model
        head="logistic regression per label on the frozen pooled embedding",
        regularisation=dict(zip(labels, chosen)),
        epochs_run=0,
        warmup_epochs=0,
        max_epochs=0,
        checkpoint="regularisation chosen by validation log loss",
        minutes=round((time.time() - started) / 60, 2),
        dataset=str(dataset.root),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        history=[],
        extra={"backbone_sha256": backbone.info.sha256},  # whose LiteRT flatbuffer the quick model runs (HeadRuntime)
    )
    card = ModelCard(
        tuning,
        training,
        Split(
            seed=split_seed, train=len(train_idx), validation=len(val_idx), test=len(test_idx), test_images=test_images
        ),
        validation=evaluate(y[val_idx], val_probs, thresholds, labels, at_least_one),
        test=evaluate(y[test_idx], test_probs, thresholds, labels, at_least_one),
    )
    # the quick model's embedding is the backbone's, so the training photos' are already here
    familiar = TrainingPhotos.fit(x[train_idx], x[val_idx]).to_bytes()
    write_model_dir(
        out, model, card, test_images, y[test_idx], test_probs, lambda path: None, {FAMILIARITY_FILE: familiar}
    )
    return card  # no conversion: the backbone's flatbuffer is cached, and the quick model runs through it


def main(argv=None):
    from model.cli import OutError, add_verbose_flag, check_out, exit_with, quiet_tensorflow

    p = argparse.ArgumentParser(prog="python -m model.quick", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="dataset directory (default: $MIML_DATA)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument(
        "--backbone",
        default="shipped",
        help="shipped (default: the shipped model's, fine-tuned on MIML), imagenet, or a model directory",
    )
    p.add_argument("--cache", default="runs/embeddings", help="embedding cache folder (default runs/embeddings)")
    p.add_argument("--split-seed", type=int, default=CONTRACT_SPLIT_SEED)
    p.add_argument("--force", action="store_true", help="replace --out if it already holds a model directory")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    started = time.time()
    try:
        check_out(args.out, args.force)  # a bad --out, dataset or backbone: one line before TensorFlow starts
        load_dataset(args.data)
        if args.backbone not in ("shipped", "imagenet"):
            read_model_dir(args.backbone)
        quiet_tensorflow(args.verbose)
        card = train_quick(
            args.data,
            args.out,
            args.cache,
            args.backbone,
            args.split_seed,
            lambda f, message, left: print(f"{f:4.0%} {message}", flush=True),
        )
    except (DataError, ModelDirError, OutError) as e:
        exit_with(e, args.verbose)
    print(format_table(card.test))
    print(f"wrote {args.out} in {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
