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
import shutil
import sys
from pathlib import Path

from model.cli import OutError, add_verbose_flag, check_out, quiet_tensorflow
from model.data import DataError, load_dataset, split
from model.metrics import evaluate, format_table
from model.modeldir import TTA_MODES, ModelDirError, write_model_dir


def retune(model_dir, data_dir, tta, out, criterion="mcc"):
    """Write `out`: the model in `model_dir` with thresholds tuned on validation under `tta` (and, as "other_tta",
    under the other mode, for callers who trade accuracy for speed); returns metrics.json's content."""
    from model.inference import Classifier
    from model.train import choose_thresholds

    dataset = load_dataset(data_dir)
    classifier = Classifier(model_dir, tta=tta)
    if dataset.label_names != classifier.labels:
        raise DataError(f"{dataset.root}: labels {dataset.label_names} differ from the model's {classifier.labels}")
    seed = classifier.metrics["split"]["seed"]
    _, val_idx, test_idx = split(len(dataset.images), seed)
    val_photos = dataset.load_photos(val_idx, classifier.size)  # decoded once, for both modes
    y_val, y_test = dataset.labels[val_idx], dataset.labels[test_idx]
    settings = argparse.Namespace(criterion=criterion, split_seed=seed)

    def tune(c):
        """Validation probabilities under `c`'s TTA mode, and the thresholds chosen on them."""
        val_probs = c.probabilities(val_photos)
        thresholds, at_least_one, info = choose_thresholds(settings, c.labels, y_val, val_probs)
        return val_probs, thresholds, at_least_one, {**info, "tta": c.tta}

    val_probs, thresholds, at_least_one, thresholds_info = tune(classifier)
    *_, other_info = tune(Classifier(model_dir, tta=next(mode for mode in TTA_MODES if mode != tta)))
    thresholds_info["other_tta"] = {
        k: other_info[k] for k in ("tta", "thresholds", "at_least_one", "at_least_one_check")
    }
    test_probs = classifier.probabilities(dataset.load_photos(test_idx, classifier.size))

    def scores(truth, probs):
        return evaluate(truth, probs, thresholds, classifier.labels, at_least_one)

    metrics = {
        **classifier.metrics,
        "validation": scores(y_val, val_probs),
        "test": scores(y_test, test_probs),
        "retuned": {"from": Path(model_dir).name, "tta": tta, "criterion": criterion},
    }
    curve = Path(model_dir) / "training_curve.png"
    write_model_dir(
        out,
        classifier.model,
        thresholds_info,
        metrics,
        [dataset.images[i] for i in test_idx],
        y_test,
        test_probs,
        lambda path: shutil.copyfile(curve, path) if curve.exists() else None,
    )
    return metrics


def add_output_args(p):
    """--data, --tta, --out and --force: model.retune's, and model.ensemble's (which tunes through retune)."""
    p.add_argument("--data", help="the dataset it was trained on (default: $MIML_DATA)")
    p.add_argument("--tta", choices=TTA_MODES, required=True, help="flip: the mean over the photo and its mirror image")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_verbose_flag(p)


def write_or_exit(args, write):
    """`write()` unless --out exists without --force; a bad model directory or dataset is one line, not a trace."""
    quiet_tensorflow(args.verbose)
    try:
        check_out(args.out, args.force)
        return write()
    except (DataError, ModelDirError, OutError) as e:
        sys.exit(f"error: {e}")


def summary(metrics, out):
    v, t = metrics["validation"], metrics["test"]
    return (
        f"validation: Hamming loss {v['hamming_loss']:.4f}, exact match {v['exact_match']:.4f}, mAP {v['map']:.4f}; "
        f"test: {t['hamming_loss']:.4f}, {t['exact_match']:.4f}, {t['map']:.4f}; wrote {out}"
    )


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.retune", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory to start from")
    add_output_args(p)
    args = p.parse_args(argv)
    metrics = write_or_exit(args, lambda: retune(args.model, args.data, args.tta, args.out))
    print(format_table(metrics["test"]))
    print(summary(metrics, args.out))


if __name__ == "__main__":
    main()
