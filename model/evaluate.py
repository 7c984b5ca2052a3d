"""Evaluate a model directory on a split of the dataset.

python -m model.evaluate --data DIR [--model DIR] [--split-seed N] [--json FILE]
    [--runtime auto|openvino|litert|keras] [--precision auto|f32|bf16|int8]
"""

import argparse
import json
import sys

from model.cli import add_runtime_flags, add_verbose_flag, exit_with, quiet_tensorflow
from model.data import CONTRACT_SPLIT_SEED, DataError, load_dataset, split
from model.metrics import format_table
from model.modeldir import ModelDirError, SHIPPED_MODEL_DIR, read_model_dir


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.evaluate", description="Evaluate a model on the test split.")
    p.add_argument("--data", help="dataset directory (default: $MIML_DATA)")
    p.add_argument("--model", default=str(SHIPPED_MODEL_DIR), help="model directory (default: the shipped model)")
    p.add_argument(
        "--split-seed",
        type=int,
        default=CONTRACT_SPLIT_SEED,
        help=f"random_state of the split ({CONTRACT_SPLIT_SEED} = the contract split)",
    )
    p.add_argument("--json", help="also write the metrics to this JSON file")
    add_runtime_flags(p)
    add_verbose_flag(p)
    args = p.parse_args(argv)
    try:
        dataset = load_dataset(args.data)  # a bad dataset or model directory: one line before TensorFlow starts
        read_model_dir(args.model)
    except (DataError, ModelDirError) as e:
        exit_with(e, args.verbose)
    quiet_tensorflow(args.verbose, on_demand=True)  # imported only if a Keras model must load (nothing cached)
    try:
        from model.inference import Classifier

        classifier = Classifier(args.model, runtime=args.runtime, precision=args.precision)
        if dataset.label_names != classifier.labels:
            raise DataError(f"{dataset.root}: labels {dataset.label_names} differ from the model's {classifier.labels}")
        trained_on = classifier.card.split.seed
        if trained_on is not None and trained_on != args.split_seed:
            print(
                f"note: the model was trained with split seed {trained_on}; this split's test photos "
                "may include photos it was trained on",
                file=sys.stderr,
            )
        _, _, test_idx = split(len(dataset.images), args.split_seed)
        probs = classifier.probabilities(dataset.load_photos(test_idx, classifier.size))
        metrics = classifier.evaluate(dataset.labels[test_idx], probs)
        print(format_table(metrics))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(metrics, f, indent=2)
    except (DataError, ModelDirError, ValueError) as e:  # ValueError: a precision this CPU lacks
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: {e.filename or args.json}: {e.strerror or e}")


if __name__ == "__main__":
    main()
