"""Train, tune and evaluate a scene classifier, and write its model directory.

    python -m model.train --data DIR --out DIR [--force] [--arch efficientnet-lite0] [--epochs 20] [--seed 0] [--split-seed 100]
                          [--distribute none|mirrored|multi-worker]   (multi-worker: one process a worker, with TF_CONFIG)

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
import csv
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from model.backbones.torch_legacy import WeightsFileError
from model.cli import add_verbose_flag, quiet_tensorflow
from model.data import CONTRACT_SPLIT_SEED, DataError, fold_split, load_dataset, split
from model.metrics import evaluate, format_table
from model.preprocess import content_box
from model.modeldir import write_model_dir
from model.thresholds import CRITERIA, GRID, at_least_one_helps, tune_thresholds


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


def phase_progress(keras, phase, epochs):
    """A callback that names the phase as it starts and, after each epoch, its time and the most time left."""
    starts, times = [], []

    def epoch_end(epoch, logs):
        times.append(time.time() - starts[-1])
        left = (epochs - epoch - 1) * sum(times) / len(times)
        print(
            f"{phase}: epoch {epoch + 1}/{epochs} took {times[-1]:.0f} s; at most {left / 60:.1f} min left "
            "in this phase (early stopping may end it sooner)",
            flush=True,
        )

    return keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: print(f"{phase}: up to {epochs} epochs", flush=True),
        on_epoch_begin=lambda epoch, logs: starts.append(time.time()),
        on_epoch_end=epoch_end,
    )


def model_tf(model):
    import tensorflow as tf

    return tf


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


def fit_stage(model, keras, name, work, train, val, epochs, optimizer, patience, phase, loss="binary_crossentropy"):
    """One resumable fit, announced as `phase`; keeps the best-validation-loss weights in work/NAME.best.weights.h5.
    `train` is (batches, steps per epoch)."""
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
        phase_progress(keras, phase, epochs),
    ]
    batches, steps = train
    if isinstance(model.distribute_strategy, model_tf(model).distribute.MultiWorkerMirroredStrategy):
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


def refuse_to_overwrite(out, force):
    """Stop before any work if `out` already holds something, unless --force."""
    if not force and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: already exists and is not empty; pass --force to replace it")


def make_strategy(tf, distribute):
    """The default strategy (a no-op); MirroredStrategy, a copy of the model on every GPU (one replica on a
    CPU); or MultiWorkerMirroredStrategy, one process a machine, each started with TF_CONFIG naming all the
    workers and its own index: every worker trains its share of each global batch, gradients are summed
    across workers, and all end with the same weights."""
    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribute == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--distribute multi-worker needs TF_CONFIG: the workers' host:port list and this "
                "worker's index (see docs/deploy.md, Training on several machines)"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def training_photos(args, tf, dataset, train_idx, photos, size):
    """The training photos as a tensor, and the augmentation for train_batches. --augment upload crops from
    photos letterboxed at 1.5x the input size (MIML's largest are 384 px), so that a crop keeps its detail."""
    if args.augment == "scene" or args.arch == "seed-cnn":
        return tf.constant(photos[train_idx]), None
    source = round(1.5 * size)
    boxes = tf.constant([content_box(dataset.path(i), source) for i in train_idx], tf.float32)
    return (
        tf.constant(dataset.load_photos(train_idx, source)),
        lambda image, i, key: upload_augment(tf, image, tf.gather(boxes, i), key, size),
    )


def finetune_optimizer(args, keras, steps_per_epoch):
    """Adam at --lr, decayed along a cosine with --schedule cosine, slower for the early layers with --early-lr."""
    lr = args.lr
    if args.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(args.lr, steps_per_epoch * args.epochs, alpha=0.01)
    if args.early_lr == 1.0:
        return keras.optimizers.Adam(lr)
    from model.backbones.efficientnet_lite import early_layers

    return layerwise_adam(keras, lr, early_layers(args.arch.split("-", 1)[1]), args.early_lr)


def fit_model(args, dataset, splits, work):
    """Build the network and train it (warm-up, then fine-tuning), resuming from `work`.

    Returns the trained model, every photo at its input size, the number of replicas and the global batch size."""
    import keras
    import tensorflow as tf
    from model.network import build_model

    train_idx, val_idx, test_idx = splits
    strategy = make_strategy(tf, args.distribute)  # first: a multi-worker strategy must precede any TensorFlow op
    keras.utils.set_random_seed(args.seed)
    batch_size = args.batch_size * strategy.num_replicas_in_sync
    with strategy.scope():
        model = build_model(args.arch, dataset.label_names, size=args.input_size)
        size = model.input_shape[1]
        print(
            f"{args.arch}: {model.count_params():,} parameters, input {size}x{size}; "
            f"{len(train_idx)} train / {len(val_idx)} validation / {len(test_idx)} test photos; "
            f"{strategy.num_replicas_in_sync} replica(s), batch {batch_size}"
        )
        photos = dataset.load_photos(range(len(dataset.images)), size)
        x_train, augment = training_photos(args, tf, dataset, train_idx, photos, size)
        y_train = tf.constant(dataset.labels[train_idx], tf.float32)
        val_ds = tf.data.Dataset.from_tensor_slices((photos[val_idx], dataset.labels[val_idx].astype("float32"))).batch(
            64
        )
        loss = keras.losses.BinaryCrossentropy(label_smoothing=args.label_smoothing)

        def stage(name, phase, epochs, optimizer, seed, patience=args.patience):  # own order and augmentation
            batches = train_batches(
                tf, x_train, y_train, batch_size, epochs, args.seed * 10 + seed, augment, args.mixup
            )
            fit_stage(model, keras, name, work, batches, val_ds, epochs, optimizer, patience, phase, loss)

        if args.arch == "seed-cnn":  # the original recipe: SGD, Nesterov momentum, from scratch
            stage(
                "finetune",
                "training from scratch",
                args.epochs,
                keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                1,
            )
        else:
            set_backbone_trainable(model, keras, False)
            stage("warmup", "warm-up (head only)", args.warmup_epochs, keras.optimizers.Adam(1e-3), 0)
            set_backbone_trainable(model, keras, True)
            stage(
                "finetune",
                "fine-tuning (whole network)",
                args.epochs,
                finetune_optimizer(args, keras, -(-len(train_idx) // batch_size)),
                1,
                args.epochs if args.schedule == "cosine" else args.patience,
            )
    return model, photos, strategy.num_replicas_in_sync, batch_size


def choose_thresholds(args, labels, y_val, val_probs):
    """Per-label thresholds and the 'at least one label' rule, from validation only.

    Returns the thresholds, the rule, and thresholds.json's content."""
    thresholds = tune_thresholds(y_val, val_probs, args.criterion)
    at_least_one, check = at_least_one_helps(y_val, val_probs, thresholds)
    return (
        thresholds,
        at_least_one,
        {
            "labels": labels,
            "thresholds": dict(zip(labels, thresholds.tolist())),
            "criterion": args.criterion,
            "grid": f"{GRID[0]}..{GRID[-1]} in steps of {GRID[1] - GRID[0]:.3f}",
            "chosen_on": f"validation split: {len(y_val)} photos (split seed {args.split_seed}"
            f"{', fold ' + args.fold if getattr(args, 'fold', None) else ''}); never the test split",
            "at_least_one": at_least_one,
            "at_least_one_check": check,
        },
    )


def training_record(args, model, work, replicas, batch_size, minutes, dataset):
    """metrics.json's "training" section: the recipe, the run and every epoch's log row (warm-up first)."""
    logs = [
        row
        for stage in ("warmup", "finetune")
        if (work / f"{stage}.log.csv").exists()
        for row in csv.DictReader(open(work / f"{stage}.log.csv"))
    ]
    return {
        "architecture": args.arch,
        "input_size": model.input_shape[1],
        "parameters": int(model.count_params()),
        "epochs_run": len(logs),
        "warmup_epochs": 0 if args.arch == "seed-cnn" else args.warmup_epochs,
        "max_epochs": args.epochs,
        "learning_rate": args.lr,
        "batch_size": batch_size,
        "replicas": replicas,
        "augment": "scene" if args.arch == "seed-cnn" else args.augment,
        "schedule": args.schedule,
        "early_lr": args.early_lr,
        "label_smoothing": args.label_smoothing,
        "mixup": args.mixup,
        "seed": args.seed,
        "minutes": round(minutes, 1),
        "dataset": str(dataset.root),
        "checkpoint": "lowest validation loss",
        "history": logs,
    }


def make_split(args, dataset):
    """(train, validation, test) indices: the --split-seed split, or fold K of --fold K/N."""
    if not args.fold:
        return split(len(dataset.images), args.split_seed)
    try:
        fold, folds = (int(n) for n in args.fold.split("/"))
    except ValueError:
        raise ValueError(f"--fold {args.fold}: write it as K/N, e.g. 1/5") from None
    if not 1 <= fold <= folds or folds < 2:
        raise ValueError(f"--fold {args.fold}: K must be 1..N and N at least 2")
    return fold_split(dataset.labels, folds, fold - 1, seed=args.split_seed)


def train(args):
    started = time.time()
    out = Path(args.out)
    refuse_to_overwrite(out, args.force)
    dataset = load_dataset(args.data)
    labels = dataset.label_names
    train_idx, val_idx, test_idx = make_split(args, dataset)
    work = out.with_name(out.name + ".training")  # resumable state, removed once the model directory is written
    work.mkdir(parents=True, exist_ok=True)
    model, photos, replicas, batch_size = fit_model(args, dataset, (train_idx, val_idx, test_idx), work)

    from model.inference import predict_arrays
    from model.network import build_model

    # The model to write, with the trained weights: uncompiled (no optimizer state) and outside any distribution
    # strategy, so that each worker of a multi-worker run predicts its photos alone (not gathered from all).
    export = build_model(args.arch, labels, pretrained=False, size=model.input_shape[1])
    export.set_weights(model.get_weights())
    val_probs, test_probs = predict_arrays(export, photos[val_idx]), predict_arrays(export, photos[test_idx])
    y_val, y_test = dataset.labels[val_idx], dataset.labels[test_idx]
    thresholds, at_least_one, thresholds_info = choose_thresholds(args, labels, y_val, val_probs)
    minutes = (time.time() - started) / 60
    training = training_record(args, model, work, replicas, batch_size, minutes, dataset)
    metrics = {
        "labels": labels,
        "training": training,
        "split": {
            "seed": args.split_seed,
            **({"fold": args.fold} if args.fold else {}),
            "train": len(train_idx),
            "validation": len(val_idx),
            "test": len(test_idx),
            "test_images": [dataset.images[i] for i in test_idx],
        },
        "validation": evaluate(y_val, val_probs, thresholds, labels, at_least_one),
        "test": evaluate(y_test, test_probs, thresholds, labels, at_least_one),
    }
    write_model_dir(
        out,
        export,
        thresholds_info,
        metrics,
        metrics["split"]["test_images"],
        y_test,
        test_probs,
        lambda path: draw_curve(training["history"], path),
    )
    shutil.rmtree(work, ignore_errors=True)
    test = metrics["test"]
    print(format_table(test))
    print(
        f"test split: Hamming loss {test['hamming_loss']:.4f}, exact match {test['exact_match']:.4f}, "
        f"mAP {test['map']:.4f}; wrote {out} in {minutes:.1f} minutes"
    )


def main(argv=None):
    args = parse_args(argv)
    quiet_tensorflow(args.verbose)
    try:
        train(args)
    except (DataError, WeightsFileError, ValueError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: {e.filename or ''}: {e.strerror or e}")


if __name__ == "__main__":
    main()
