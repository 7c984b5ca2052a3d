"""Tune a trained model's thresholds again on its own validation photos, with or without flip
test-time augmentation (TTA), without touching the network.

    python -m model.retune --model DIR --data DIR --tta flip|none --out DIR [--force]

Validation and test probabilities are computed through `Classifier` with the chosen TTA; the
thresholds and the "at least one label" rule come from the validation photos only, exactly as
`model.train` chooses them; the test metrics are computed once, at the end, and only reported.
The training record, the split and the training curve are kept; `thresholds.json` says which TTA
the thresholds belong to, and every later load of the directory runs that way.
"""

import argparse
import dataclasses
import shutil
from pathlib import Path

from model.cli import OutError, add_verbose_flag, check_out, exit_with, quiet_tensorflow
from model.data import DataError, load_dataset, split
from model.familiarity import FILE as FAMILIARITY_FILE
from model.familiarity import TrainingPhotos
from model.metrics import evaluate, format_table
from model.modeldir import (
    TTA_MODES,
    ModelCard,
    ModelDirError,
    OperatingPoint,
    Retuned,
    read_model_dir,
    write_model_dir,
)
from model.thresholds import choose_thresholds

# Photos a forward pass. A LiteRT interpreter keeps the arena of its batch size while it lives (the ensemble's
# activations, twice as many under flip), and two classifiers, one a TTA mode, are alive at once: at the default
# 32 a pass, retuning the shipped model peaked at 2.10 GiB; at 8, 1.54 GiB, and took less CPU (110 s, was 132 s).
BATCH = 8


def retune(model_dir, data_dir, tta, out, criterion="mcc", source=None):
    """Write `out`: the model in `model_dir` with thresholds tuned on validation under `tta` (and, as "other_tta",
    under the other mode, for callers who trade accuracy for speed); returns its card. metrics.json's
    `"retuned": {"from": ...}` names `source`, by default the folder name of `model_dir`."""
    from model.inference import Classifier

    dataset = load_dataset(data_dir)
    classifier = Classifier(model_dir, tta=tta, precision="f32")  # float32: thresholds and stored probabilities exact
    if dataset.label_names != classifier.labels:
        raise DataError(f"{dataset.root}: labels {dataset.label_names} differ from the model's {classifier.labels}")
    seed = classifier.card.split.seed
    train_idx, val_idx, test_idx = split(len(dataset.images), seed)
    val_photos = dataset.load_photos(val_idx, classifier.size)  # decoded once, for both modes
    y_val, y_test = dataset.labels[val_idx], dataset.labels[test_idx]

    def tune(c):
        """Validation probabilities under `c`'s TTA mode, and the thresholds chosen on them."""
        val_probs = c.probabilities(val_photos, BATCH)
        thresholds, at_least_one, tuning = choose_thresholds(c.labels, y_val, val_probs, criterion, split_seed=seed)
        return val_probs, thresholds, at_least_one, dataclasses.replace(tuning, tta=c.tta)

    val_probs, thresholds, at_least_one, tuning = tune(classifier)
    *_, other = tune(Classifier(model_dir, tta=next(mode for mode in TTA_MODES if mode != tta), precision="f32"))
    tuning.other_tta = OperatingPoint(other.tta, other.thresholds, other.at_least_one, other.at_least_one_check)
    test_probs = classifier.probabilities(dataset.load_photos(test_idx, classifier.size), BATCH)

    def scores(truth, probs):
        return evaluate(truth, probs, thresholds, classifier.labels, at_least_one)

    card = dataclasses.replace(
        classifier.card,
        tuning=tuning,
        validation=scores(y_val, val_probs),
        test=scores(y_test, test_probs),
        retuned=Retuned(from_model=source or Path(model_dir).name, tta=tta, criterion=criterion),
    )
    familiar = TrainingPhotos.fit(  # under `tta`: the embeddings the retuned model computes
        classifier.embeddings(dataset.load_photos(train_idx, classifier.size), BATCH),
        classifier.embeddings(val_photos, BATCH),
    )
    curve = Path(model_dir) / "training_curve.png"
    write_model_dir(
        out,
        classifier.model,
        card,
        [dataset.images[i] for i in test_idx],
        y_test,
        test_probs,
        lambda path: shutil.copyfile(curve, path) if curve.exists() else None,
        {FAMILIARITY_FILE: familiar.to_bytes()},
    )
    return card


def add_output_args(p):
    """--data, --tta, --out and --force: model.retune's, and model.ensemble's (which tunes through retune)."""
    p.add_argument("--data", help="the dataset it was trained on (default: $MIML_DATA)")
    p.add_argument("--tta", choices=TTA_MODES, required=True, help="flip: the mean over the photo and its mirror image")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_verbose_flag(p)


def write_or_exit(args, check, write):
    """`write()` once the add_output_args `args` pass and `check()` (of the model directories, raising ModelDirError)
    does, before TensorFlow starts: --out follows model.cli.check_out (the --out rule, with --force), --data reads.
    A bad --out, model directory or dataset is one line, not a trace (--verbose: with the traceback before it)."""
    try:
        check_out(args.out, args.force)
        load_dataset(args.data)
        check()
        quiet_tensorflow(args.verbose)
        return write()
    except (DataError, ModelDirError, OutError) as e:
        exit_with(e, args.verbose)


def summary(card: ModelCard, out):
    v, t = card.validation, card.test
    return (
        f"validation: Hamming loss {v['hamming_loss']:.4f}, exact match {v['exact_match']:.4f}, mAP {v['map']:.4f}; "
        f"test: {t['hamming_loss']:.4f}, {t['exact_match']:.4f}, {t['map']:.4f}; wrote {out}"
    )


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.retune", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory to start from")
    add_output_args(p)
    args = p.parse_args(argv)
    card = write_or_exit(
        args, lambda: read_model_dir(args.model), lambda: retune(args.model, args.data, args.tta, args.out)
    )
    print(format_table(card.test))
    print(summary(card, args.out))


if __name__ == "__main__":
    main()
