"""Train, tune and evaluate a scene classifier, and write its model directory.

    python -m model.train --data DIR --out DIR [--force] [--arch efficientnet-lite0] [--epochs 20] [--seed 0] [--split-seed 100]
                          [--distribute none|mirrored|multi-worker]   (multi-worker: one process a worker, with TF_CONFIG)
                          [--progress-json FILE|-]   (progress as JSON lines: docs/progress.md)

Protocol (every choice on validation, none on test):
1. split: test = the contract split's 400 photos, validation = 20% of the rest;
2. warm-up: the new head alone, backbone frozen (EfficientNet only);
3. fine-tuning: the whole network (batch-norm statistics kept frozen), with
   augmentation that mimics uploads (crops of any aspect ratio, mild brightness and
   contrast, blur, JPEG, flips; no vertical flips and no hue changes: sunset and
   desert *are* colour); the checkpoint with the lowest validation loss is kept,
   early stopping ends it;
4. thresholds: per label, the best validation Matthews correlation;
5. test metrics are computed once, at the end, and only reported.
A run that is stopped can be started again with the same command: it resumes
from the last finished epoch. An --out that already holds a model directory is
replaced only with --force.
"""

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from model.backbones.torch_legacy import WeightsFileError
from model.cli import OutError, add_verbose_flag, check_out, exit_with, quiet_tensorflow
from model.data import CONTRACT_SPLIT_SEED, DataError, check_labels_vary, fold_split, load_dataset, split
from model.familiarity import FILE as FAMILIARITY_FILE
from model.familiarity import TrainingPhotos
from model.metrics import evaluate, format_table
from model.modeldir import ModelCard, ModelDirError, Split, Training, write_model_dir
from model.preprocess import content_box
from model.thresholds import CRITERIA, choose_thresholds


class TrainError(Exception):
    """A request model.train refuses (an --out in the way, a malformed --fold, ...); the message says why."""


@dataclass
class Recipe:
    """How to train: model.train's options (see parse_args for each one's meaning and default)."""

    arch: str = "efficientnet-lite0"
    input_size: int | None = None
    epochs: int = 20
    warmup_epochs: int = 2
    patience: int = 5
    batch_size: int = 32
    lr: float = 1e-4
    augment: str = "upload"
    schedule: str = "plateau"
    early_lr: float = 1.0
    label_smoothing: float = 0.0
    mixup: float = 0.0
    criterion: str = "mcc"
    seed: int = 0
    split_seed: int = CONTRACT_SPLIT_SEED
    fold: str | None = None  # "K/N"
    distribute: str = "none"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Recipe":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @property
    def total_epochs(self) -> int:
        """The most epochs a run has: warm-up and fine-tuning (the seed CNN has no warm-up)."""
        return self.epochs + (0 if self.arch == "seed-cnn" else self.warmup_epochs)


class Progress:
    """model.train's progress as JSON lines on a channel (docs/progress.md): one object a line, flushed at once.

    Every line has "phase", "progress" (0..1), "message" and "eta_s" (seconds left, or null); an epoch's line
    also has "epoch" (1-based over the whole run), "epochs", the phase's "phase_epoch"/"phase_epochs", the
    epoch's "seconds" and its Keras logs ("loss", "val_loss", "map", "val_map"). Without a channel it says nothing."""

    def __init__(self, channel: TextIO | None = None) -> None:
        self.channel = channel

    def __call__(self, phase: str, progress: float, message: str, eta_s: float | None = None, **extra: Any) -> None:
        if self.channel is None:
            return
        line = {"phase": phase, "progress": round(min(max(progress, 0.0), 1.0), 4), "message": message}
        line["eta_s"] = None if eta_s is None else round(eta_s, 1)
        self.channel.write(json.dumps({**line, **extra}) + "\n")
        self.channel.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="dataset directory (default: $MIML_DATA)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument(
        "--arch",
        "--backbone",
        dest="arch",
        default="efficientnet-lite0",
        help="efficientnet-lite0 (default), efficientnet-lite1, efficientnet-lite2 or seed-cnn",
    )
    p.add_argument(
        "--input-size",
        type=int,
        help="EfficientNet input size in pixels (default: the backbone's native size, 224 for Lite0); "
        "the seed CNN is always 100",
    )
    p.add_argument("--epochs", type=int, default=20, help="most fine-tuning epochs (default 20)")
    p.add_argument("--warmup-epochs", type=int, default=2, help="head-only epochs before fine-tuning")
    p.add_argument("--patience", type=int, default=5, help="early stopping patience on validation loss")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (Adam)")
    p.add_argument(
        "--augment",
        choices=["scene", "upload"],
        default="upload",
        help="scene (version 1's): flips, mild zoom and shifts; upload (default): crops of any aspect ratio from portrait to "
        "panorama, mild brightness/contrast, blur and JPEG recompression, flips (hues kept)",
    )
    p.add_argument(
        "--schedule",
        choices=["plateau", "cosine"],
        default="plateau",
        help="plateau: constant learning rate, early stopping; cosine: decays to 1%% over --epochs, "
        "which all run (the lowest-validation-loss epoch is still kept)",
    )
    p.add_argument(
        "--early-lr",
        type=float,
        default=1.0,
        help="learning-rate factor for the stem and the first three stages when fine-tuning "
        "(e.g. 0.1 keeps more of the ImageNet features; default 1)",
    )
    p.add_argument("--label-smoothing", type=float, default=0.0, help="binary label smoothing (default 0)")
    p.add_argument("--mixup", type=float, default=0.0, help="mixup Beta(a, a) parameter, 0 = off (default)")
    p.add_argument("--criterion", choices=sorted(CRITERIA), default="mcc", help="threshold criterion")
    p.add_argument("--seed", type=int, default=0, help="random seed for weights, shuffling and augmentation")
    p.add_argument(
        "--split-seed",
        type=int,
        default=CONTRACT_SPLIT_SEED,
        help=f"random_state of the splits ({CONTRACT_SPLIT_SEED} = the contract split)",
    )
    p.add_argument(
        "--fold",
        metavar="K/N",
        help="train for fold K (1..N) of an N-fold cross-validation over every photo (model.crossval "
        "runs them all) instead of the --split-seed split: test = fold K, validation = 20%% of the rest",
    )
    p.add_argument(
        "--distribute",
        choices=["none", "mirrored", "multi-worker"],
        default="none",
        help="mirrored: tf.distribute.MirroredStrategy over all visible GPUs; multi-worker: "
        "MultiWorkerMirroredStrategy over the workers TF_CONFIG names, this process being one "
        "(batch size per replica)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it already holds a model directory")
    p.add_argument(
        "--progress-json",
        metavar="FILE",
        help="also report progress as JSON lines (docs/progress.md) to FILE; '-' for stdout, the other output "
        "then going to stderr",
    )
    add_verbose_flag(p)
    return p.parse_args(argv)


def scene_augment(tf, image, key):
    """Scene-safe augmentation, a pure function of (image, key): horizontal flip, zoom in by up to 15%,
    shift by up to 5%; no vertical flip, no colour change (sunset and desert *are* colour)."""
    image = tf.image.stateless_random_flip_left_right(image, key)
    scale = 1.0 - tf.random.stateless_uniform([], key + 1, 0.0, 0.15)
    centre = 0.5 + tf.random.stateless_uniform([2], key + 2, -0.05, 0.05)
    box = tf.concat([centre - scale / 2, centre + scale / 2], axis=0)[None]
    size = tf.shape(image)[:2]
    return tf.image.crop_and_resize(image[None], box, [0], size, extrapolation_value=127.0)[0]


def gaussian_blur(tf, image, sigma):
    """A (h, w, 3) image blurred by a 7-tap Gaussian of `sigma` pixels, edges mirrored."""
    taps = tf.exp(-(tf.range(-3.0, 4.0) ** 2) / (2 * sigma**2))
    taps = tf.tile((taps / tf.reduce_sum(taps))[:, None, None, None], [1, 1, 3, 1])
    x = tf.pad(image[None], [[0, 0], [3, 3], [3, 3], [0, 0]], "REFLECT")
    x = tf.nn.depthwise_conv2d(x, taps, [1, 1, 1, 1], "VALID")  # down the columns
    return tf.nn.depthwise_conv2d(x, tf.transpose(taps, [1, 0, 2, 3]), [1, 1, 1, 1], "VALID")[0]  # along the rows


def upload_augment(tf, image, box, key, size):
    """Augmentation that mimics what users upload, a pure function of (image, box, key).

    `image` is the photo letterboxed at a larger size than the model's (float, 0..255), `box` where the photo
    lies on it (preprocess.content_box). The result is letterboxed at `size`, as `load_image` prepares uploads:
    1. a crop inside the photo, 45-100% of its area; its aspect ratio is the photo's 40% of the time, else
       random between 1:2 (portrait) and 3:1 (a panorama): phones crop 4:3, 16:9 and strips, MIML is 3:2;
    2. mild brightness (up to 10%) and contrast (up to 15%) changes, the same on every channel, so that hues
       stay (sunset and desert *are* colour);
    3. a slight blur 30% of the time and JPEG recompression (quality 35-90) 30% of the time;
    4. a horizontal flip half of the time."""
    u = tf.random.stateless_uniform([12], key)
    top, left, bottom, right = tf.unstack(box)
    height, width = bottom - top, right - left
    aspect = tf.where(u[0] < 0.4, width / height, tf.exp(np.log(0.5) + u[1] * np.log(6.0)))
    area = (0.45 + 0.55 * u[2]) * height * width
    w, h = tf.minimum(tf.sqrt(area * aspect), width), tf.minimum(tf.sqrt(area / aspect), height)
    y, x = top + u[3] * (height - h), left + u[4] * (width - w)
    out_h = tf.maximum(8, tf.cast(tf.round(size * h / tf.maximum(w, h)), tf.int32))
    out_w = tf.maximum(8, tf.cast(tf.round(size * w / tf.maximum(w, h)), tf.int32))
    crop = tf.image.crop_and_resize(image[None], tf.stack([y, x, y + h, x + w])[None], [0], tf.stack([out_h, out_w]))[0]
    mean = tf.reduce_mean(crop)
    crop = tf.clip_by_value((crop - mean) * (0.85 + 0.3 * u[5]) + mean + (u[6] - 0.5) * 51.0, 0.0, 255.0)
    crop = tf.cond(u[7] < 0.3, lambda: gaussian_blur(tf, crop, 0.4 + u[8]), lambda: crop)
    crop = tf.cond(
        u[9] < 0.3,
        lambda: 255.0 * tf.image.adjust_jpeg_quality(crop / 255.0, tf.cast(35 + 55 * u[10], tf.int32)),
        lambda: crop,
    )
    crop = tf.cond(u[11] < 0.5, lambda: tf.reverse(crop, [1]), lambda: crop)
    padded = tf.image.pad_to_bounding_box(crop - 127.0, (size - out_h) // 2, (size - out_w) // 2, size, size)
    return tf.ensure_shape(padded + 127.0, [size, size, 3])


def mixup(tf, x, y, key, alpha):
    """Each photo of a batch blended with its mirror in the batch order (the last with the first, ...), its
    labels by the same weight, drawn from Beta(alpha, alpha): soft labels between scenes."""
    a = tf.random.stateless_gamma([tf.shape(x)[0]], key, alpha)
    b = tf.random.stateless_gamma([tf.shape(x)[0]], key + 1, alpha)
    weight = a / (a + b)
    return (
        weight[:, None, None, None] * x + (1 - weight[:, None, None, None]) * x[::-1],
        weight[:, None] * y + (1 - weight[:, None]) * y[::-1],
    )


def train_batches(tf, x, y, batch_size, epochs, seed, augment=None, mixup_alpha=0.0):
    """Training batches for `epochs` epochs, and the steps per epoch.

    `augment(image, index, key)` (default: scene_augment) sees each photo as float 0..255 with its position in
    `x`; `mixup_alpha` > 0 blends the photos of each batch (mixup). The order and the augmentation depend only
    on `seed` and each sample's position, never on TensorFlow's random state, so a run is the same with or
    without a distribution strategy."""
    augment = augment or (lambda image, i, key: scene_augment(tf, image, key))
    steps = -(-len(x) // batch_size)
    rng = np.random.default_rng(seed)
    order = np.concatenate([np.resize(rng.permutation(len(x)), steps * batch_size) for _ in range(epochs)])
    keys = np.stack([np.full(len(order), seed), np.arange(len(order)) * 3], axis=1)
    ds = (
        tf.data.Dataset.from_tensor_slices((order, keys))
        .map(
            lambda i, key: (augment(tf.cast(tf.gather(x, i), tf.float32), i, key), tf.gather(y, i), key),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(batch_size)
    )
    if mixup_alpha:
        ds = ds.map(lambda xb, yb, kb: mixup(tf, xb, yb, kb[0] + [0, 1], mixup_alpha) + (kb,))
    return ds.map(lambda xb, yb, kb: (xb, yb)).prefetch(2), steps


def set_backbone_trainable(model, keras, trainable):
    """Head always trains; the backbone only when `trainable`; batch-norm layers never (tiny batches)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif layer.name not in ("probabilities", "dropout"):
            layer.trainable = trainable


EPOCHS_SHARE = (0.05, 0.9)  # the progress the epochs span: from 5% (setting up before) to 95% (evaluating after)


def phase_progress(keras, phase, epochs, progress=None, before=0, total=None, times=None):
    """A callback that names the phase as it starts and, after each epoch, its time and the most time left, in
    words on stdout and as a `progress` line. `before`: the run's epochs before this phase; `total`: the run's
    most epochs; `times`: every epoch's seconds in this process so far (shared across phases), for the ETA."""
    total = total or before + epochs
    progress = progress or Progress()
    starts, times = [], [] if times is None else times

    def epoch_end(epoch, logs):
        times.append(time.time() - starts[-1])
        mean = sum(times) / len(times)
        left = (epochs - epoch - 1) * mean
        print(
            f"{phase}: epoch {epoch + 1}/{epochs} took {times[-1]:.0f} s; at most {left / 60:.1f} min left "
            "in this phase (early stopping may end it sooner)",
            flush=True,
        )
        done = before + epoch + 1
        progress(
            phase,
            EPOCHS_SHARE[0] + EPOCHS_SHARE[1] * done / total,
            f"{phase}: epoch {epoch + 1}/{epochs}",
            (total - done) * mean,
            epoch=done,
            epochs=total,
            phase_epoch=epoch + 1,
            phase_epochs=epochs,
            seconds=round(times[-1], 2),
            **{k: float(v) for k, v in (logs or {}).items() if k in ("loss", "val_loss", "map", "val_map")},
        )

    def train_begin(logs):
        print(f"{phase}: up to {epochs} epochs", flush=True)
        eta = (total - before) * sum(times) / len(times) if times else None  # from the earlier phase's epochs
        progress(phase, EPOCHS_SHARE[0] + EPOCHS_SHARE[1] * before / total, f"{phase}: up to {epochs} epochs", eta)

    return keras.callbacks.LambdaCallback(
        on_train_begin=train_begin,
        on_epoch_begin=lambda epoch, logs: starts.append(time.time()),
        on_epoch_end=epoch_end,
    )


def build_from_plain_batch(model, batches):
    """Two workarounds for Keras 3's fit under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388).
    1. fit builds the model by averaging the first distributed batch with strategy.reduce, which fails on its
       PerReplica values ("Attempt to convert a value (PerReplica ...) to a Tensor"); it only needs the shapes:
       give it one batch as it is, before distribution.
    2. Each step averages its scalar logs (loss, mAP) over the workers with strategy.reduce(..., axis=0),
       which fails on a scalar ("Invalid reduction dimension 0"): reduce scalars with axis=None."""
    from keras.src.backend.tensorflow import trainer

    build, batch = model._maybe_symbolic_build, next(iter(batches))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: build(data_batch=batch)
    if not getattr(trainer.reduce_per_replica, "scalar_safe", False):
        reduce = trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
                return trainer.tree.map_structure(
                    lambda v: strategy.reduce("MEAN", v, axis=None if v.shape.rank == 0 else 0), values
                )
            return reduce(values, strategy, reduction)

        reduce_per_replica.scalar_safe = True
        trainer.reduce_per_replica = reduce_per_replica


def layerwise_adam(keras, learning_rate, slow_layers, factor):
    """Adam whose steps are `factor` times as long for the variables of layers whose names start with one of
    `slow_layers` (scaling their gradients would not do it: Adam's steps do not depend on the gradient's scale)."""

    class LayerwiseAdam(keras.optimizers.Adam):
        def build(self, variables):
            super().build(variables)
            self.slow = [v.path.startswith(slow_layers) for v in variables]

        def update_step(self, gradient, variable, learning_rate):  # the backend may pass its own variable type
            if self.slow[self._get_variable_index(variable)]:
                learning_rate = learning_rate * factor
            return super().update_step(gradient, variable, learning_rate)

    return LayerwiseAdam(learning_rate)


def fit_stage(model, keras, name, work, train, val, epochs, optimizer, patience, announce, loss="binary_crossentropy"):
    """One resumable fit, announced by the callback `announce` (phase_progress); keeps the best-validation-loss
    weights in work/NAME.best.weights.h5. `train` is (batches, steps per epoch)."""
    import tensorflow as tf

    best = work / f"{name}.best.weights.h5"
    if (work / f"{name}.done").exists():
        model.load_weights(best)
        return
    model.compile(optimizer, loss, metrics=[keras.metrics.AUC(curve="PR", multi_label=True, name="map")])
    callbacks = [
        keras.callbacks.BackupAndRestore(str(work / f"{name}.backup")),
        keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=True, save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience),
        keras.callbacks.CSVLogger(str(work / f"{name}.log.csv"), append=True),
        announce,
    ]
    batches, steps = train
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        build_from_plain_batch(model, batches)
    # shuffle=False: train_batches already orders (and reorders) the samples; Keras cannot shuffle a tf.data pipeline
    model.fit(
        batches,
        validation_data=val,
        epochs=epochs,
        steps_per_epoch=steps,
        callbacks=callbacks,
        shuffle=False,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    model.load_weights(best)
    (work / f"{name}.done").touch()


def draw_curve(histories, path):
    """The training curve: loss and mAP per epoch, train and validation; `histories` is one run's log rows, or
    {name: rows} for several runs (an ensemble's members), one row of plots each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = histories if isinstance(histories, dict) else {"": histories}
    fig, axes = plt.subplots(len(histories), 2, figsize=(10, 3.6 * len(histories)), squeeze=False)
    for row, (name, logs) in zip(axes, histories.items()):
        for key, ax in zip(("loss", "map"), row):
            ax.plot([float(r[key]) for r in logs], label=f"train {key}")
            ax.plot([float(r[f"val_{key}"]) for r in logs], label=f"validation {key}")
            ax.set_xlabel("epoch (warm-up, then fine-tuning)")
            ax.set_title(f"{name + ': ' if name else ''}{'binary cross-entropy' if key == 'loss' else 'mAP (PR AUC)'}")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def make_strategy(tf, distribute):
    """The default strategy (a no-op); MirroredStrategy, a copy of the model on every GPU (one replica on a
    CPU); or MultiWorkerMirroredStrategy, one process a machine, each started with TF_CONFIG naming all the
    workers and its own index: every worker trains its share of each global batch, gradients are summed
    across workers, and all end with the same weights."""
    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribute == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise TrainError(
                "--distribute multi-worker needs TF_CONFIG: the workers' host:port list and this "
                "worker's index (see docs/deploy.md, Training on several machines)"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def training_photos(recipe, tf, dataset, train_idx, photos, size):
    """The training photos as a tensor, and the augmentation for train_batches. --augment upload crops from
    photos letterboxed at 1.5x the input size (MIML's largest are 384 px), so that a crop keeps its detail."""
    if recipe.augment == "scene" or recipe.arch == "seed-cnn":
        return tf.constant(photos[train_idx]), None
    source = round(1.5 * size)
    boxes = tf.constant([content_box(dataset.path(i), source) for i in train_idx], tf.float32)
    return (
        tf.constant(dataset.load_photos(train_idx, source)),
        lambda image, i, key: upload_augment(tf, image, tf.gather(boxes, i), key, size),
    )


def finetune_optimizer(recipe, keras, steps_per_epoch):
    """Adam at --lr, decayed along a cosine with --schedule cosine, slower for the early layers with --early-lr."""
    lr = recipe.lr
    if recipe.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(recipe.lr, steps_per_epoch * recipe.epochs, alpha=0.01)
    if recipe.early_lr == 1.0:
        return keras.optimizers.Adam(lr)
    from model.backbones.efficientnet_lite import early_layers

    return layerwise_adam(keras, lr, early_layers(recipe.arch.split("-", 1)[1]), recipe.early_lr)


def fit_model(recipe, dataset, splits, work, progress=None):
    """Build the network and train it (warm-up, then fine-tuning), resuming from `work`.

    `progress` (a Progress) hears of each phase and epoch. Returns the trained model, every photo at its input
    size, the number of replicas and the global batch size."""
    import keras
    import tensorflow as tf
    from model.network import build_model

    train_idx, val_idx, test_idx = splits
    progress = progress or Progress()
    strategy = make_strategy(tf, recipe.distribute)  # first: a multi-worker strategy must precede any TensorFlow op
    keras.utils.set_random_seed(recipe.seed)
    batch_size = recipe.batch_size * strategy.num_replicas_in_sync
    with strategy.scope():
        model = build_model(recipe.arch, dataset.label_names, size=recipe.input_size)
        size = model.input_shape[1]
        said = (
            f"{recipe.arch}: {model.count_params():,} parameters, input {size}x{size}; "
            f"{len(train_idx)} train / {len(val_idx)} validation / {len(test_idx)} test photos; "
            f"{strategy.num_replicas_in_sync} replica(s), batch {batch_size}"
        )
        print(said)
        progress("setup", 0.04, said)
        photos = dataset.load_photos(range(len(dataset.images)), size)
        x_train, augment = training_photos(recipe, tf, dataset, train_idx, photos, size)
        y_train = tf.constant(dataset.labels[train_idx], tf.float32)
        val_ds = tf.data.Dataset.from_tensor_slices((photos[val_idx], dataset.labels[val_idx].astype("float32"))).batch(
            64
        )
        loss = keras.losses.BinaryCrossentropy(label_smoothing=recipe.label_smoothing)

        times = []  # every epoch's seconds in this process, for the ETA

        def stage(name, phase, epochs, optimizer, seed, patience=recipe.patience, before=0):  # own order, augmentation
            batches = train_batches(
                tf, x_train, y_train, batch_size, epochs, recipe.seed * 10 + seed, augment, recipe.mixup
            )
            announce = phase_progress(keras, phase, epochs, progress, before, recipe.total_epochs, times)
            fit_stage(model, keras, name, work, batches, val_ds, epochs, optimizer, patience, announce, loss)

        if recipe.arch == "seed-cnn":  # the original recipe: SGD, Nesterov momentum, from scratch
            stage(
                "finetune",
                "training from scratch",
                recipe.epochs,
                keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                1,
            )
        else:
            set_backbone_trainable(model, keras, False)
            stage("warmup", "warm-up (head only)", recipe.warmup_epochs, keras.optimizers.Adam(1e-3), 0)
            set_backbone_trainable(model, keras, True)
            stage(
                "finetune",
                "fine-tuning (whole network)",
                recipe.epochs,
                finetune_optimizer(recipe, keras, -(-len(train_idx) // batch_size)),
                1,
                recipe.epochs if recipe.schedule == "cosine" else recipe.patience,
                before=recipe.warmup_epochs,
            )
    return model, photos, strategy.num_replicas_in_sync, batch_size


def training_record(recipe, model, work, replicas, batch_size, minutes, dataset):
    """metrics.json's "training" section: the recipe, the run and every epoch's log row (warm-up first)."""
    logs = [
        row
        for stage in ("warmup", "finetune")
        if (work / f"{stage}.log.csv").exists()
        for row in csv.DictReader(open(work / f"{stage}.log.csv"))
    ]
    return Training(
        architecture=recipe.arch,
        input_size=model.input_shape[1],
        parameters=int(model.count_params()),
        epochs_run=len(logs),
        warmup_epochs=0 if recipe.arch == "seed-cnn" else recipe.warmup_epochs,
        max_epochs=recipe.epochs,
        learning_rate=recipe.lr,
        batch_size=batch_size,
        replicas=replicas,
        augment="scene" if recipe.arch == "seed-cnn" else recipe.augment,
        schedule=recipe.schedule,
        early_lr=recipe.early_lr,
        label_smoothing=recipe.label_smoothing,
        mixup=recipe.mixup,
        seed=recipe.seed,
        minutes=round(minutes, 1),
        dataset=str(dataset.root),
        checkpoint="lowest validation loss",
        history=logs,
    )


def make_split(dataset, split_seed=CONTRACT_SPLIT_SEED, fold=None):
    """(train, validation, test) indices: the `split_seed` split, or, with `fold` "K/N", fold K of N."""
    if not fold:
        return split(len(dataset.images), split_seed)
    try:
        k, folds = (int(n) for n in fold.split("/"))
    except ValueError:
        raise TrainError(f"--fold {fold}: write it as K/N, e.g. 1/5") from None
    if not 1 <= k <= folds or folds < 2:
        raise TrainError(f"--fold {fold}: K must be 1..N and N at least 2")
    return fold_split(dataset.labels, folds, k - 1, seed=split_seed)


def embeddings_and_probabilities(model, photos, batch_size=64):
    """(pooled embeddings, probabilities) of a Keras `model` for a uint8 array of photos, from one forward pass
    of each batch: what familiarity and the thresholds need, without running the validation photos twice."""
    import keras

    from model.network import embedding_layer

    both = keras.Model(model.inputs, [model.get_layer(embedding_layer(model)).output, model.output])
    batches = [
        both.predict_on_batch(photos[i : i + batch_size].astype(np.float32)) for i in range(0, len(photos), batch_size)
    ]
    return tuple(np.concatenate([np.asarray(batch[k]) for batch in batches]) for k in (0, 1))


def check_inputs(recipe, data, out, force, progress):
    """The dataset in `data` and its (train, validation, test) indices for `recipe`, once `out` passes the --out
    rule (only a model directory, with `force`, or an empty folder is replaced) and the dataset and its split
    pass theirs. Without TensorFlow: a bad input is one line at once."""
    check_out(out, force)
    progress("setup", 0.03, "reading the dataset")
    dataset = load_dataset(data)
    indices = make_split(dataset, recipe.split_seed, recipe.fold)
    check_labels_vary(dataset.labels[indices[0]], dataset.label_names)
    return dataset, indices


def train(recipe, dataset, indices, out, progress):
    """Train `recipe` on `dataset` split as `indices` (check_inputs's) and write the model directory `out`;
    `progress` (a Progress) hears how it goes. Returns the model's card."""
    from model.network import ARCHITECTURES

    started = time.time()
    out = Path(out)
    if recipe.arch not in ARCHITECTURES:
        raise TrainError(f"unknown architecture {recipe.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    labels = dataset.label_names
    train_idx, val_idx, test_idx = indices
    work = out.with_name(out.name + ".training")  # resumable state, removed once the model directory is written
    work.mkdir(parents=True, exist_ok=True)
    model, photos, replicas, batch_size = fit_model(recipe, dataset, (train_idx, val_idx, test_idx), work, progress)

    from model.network import build_model

    progress("evaluating", 0.96, "thresholds on validation, then the test metrics")
    # The model to write, with the trained weights: uncompiled (no optimizer state) and outside any distribution
    # strategy, so that each worker of a multi-worker run predicts its photos alone (not gathered from all).
    export = build_model(recipe.arch, labels, pretrained=False, size=model.input_shape[1])
    export.set_weights(model.get_weights())
    embeddings, probs = embeddings_and_probabilities(export, photos)  # every photo once: train, validation, test
    val_probs, test_probs = probs[val_idx], probs[test_idx]
    # familiarity: the training photos' embeddings, its threshold from the validation photos'
    familiar = TrainingPhotos.fit(embeddings[train_idx], embeddings[val_idx])
    y_val, y_test = dataset.labels[val_idx], dataset.labels[test_idx]
    thresholds, at_least_one, tuning = choose_thresholds(
        labels, y_val, val_probs, recipe.criterion, recipe.split_seed, recipe.fold
    )
    minutes = (time.time() - started) / 60
    training = training_record(recipe, model, work, replicas, batch_size, minutes, dataset)
    test_images = [dataset.images[i] for i in test_idx]
    card = ModelCard(
        tuning,
        training,
        Split(
            seed=recipe.split_seed,
            fold=recipe.fold,
            train=len(train_idx),
            validation=len(val_idx),
            test=len(test_idx),
            test_images=test_images,
        ),
        validation=evaluate(y_val, val_probs, thresholds, labels, at_least_one),
        test=evaluate(y_test, test_probs, thresholds, labels, at_least_one),
    )
    progress("writing", 0.98, f"writing {out}")
    write_model_dir(
        out,
        export,
        card,
        test_images,
        y_test,
        test_probs,
        lambda path: draw_curve(training.history, path),
        {FAMILIARITY_FILE: familiar.to_bytes()},
    )
    shutil.rmtree(work, ignore_errors=True)
    test = card.test
    print(format_table(test))
    said = (
        f"test split: Hamming loss {test['hamming_loss']:.4f}, exact match {test['exact_match']:.4f}, "
        f"mAP {test['map']:.4f}; wrote {out} in {minutes:.1f} minutes"
    )
    print(said)
    progress("done", 1.0, said, 0.0, model=str(out))
    return card


@contextlib.contextmanager
def progress_channel(path):
    """The Progress of --progress-json `path`: None says nothing; "-" writes to stdout, and sends everything else
    printed to stdout to stderr meanwhile, so that stdout holds the JSON lines alone."""
    if not path:
        yield Progress()
    elif path == "-":
        channel = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            yield Progress(channel)
    else:
        with open(path, "w") as channel:
            yield Progress(channel)


def main(argv=None):
    args = parse_args(argv)
    with progress_channel(args.progress_json) as progress:
        try:
            recipe = Recipe.from_args(args)
            dataset, indices = check_inputs(recipe, args.data, args.out, args.force, progress)
            quiet_tensorflow(args.verbose)
            train(recipe, dataset, indices, args.out, progress)
        except (
            DataError,
            WeightsFileError,
            ModelDirError,
            TrainError,
            OutError,
            OSError,
        ) as e:  # OSError: a file, named
            message = f"{e.filename or ''}: {e.strerror or e}" if isinstance(e, OSError) else str(e)
            progress("failed", 0.0, f"error: {message}")
            exit_with(e, args.verbose, message)


if __name__ == "__main__":
    main()
