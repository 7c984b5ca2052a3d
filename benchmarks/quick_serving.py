"""A quick model's first use, timed: loading it through its backbone's cached LiteRT flatbuffer (HeadRuntime, what
the app does now) against converting its own graph (what it did before), side by side in one run; and how far
the two runtimes' probabilities are from Keras's.

    python benchmarks/quick_serving.py --model RUNS/models/ID [--data DIR]

The model must be a quick model whose backbone's flatbuffer is cached (any quick job leaves it so). Prints a
markdown table for docs/trained-models.md.
"""

import argparse
import contextlib
import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a quick model directory")
    p.add_argument("--data", help="its dataset (default: $MIML_DATA), for a few photos to compare on")
    args = p.parse_args()
    from model.cli import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    from model.data import load_dataset
    from model.inference import Classifier, HeadRuntime, LiteRuntime, with_outputs

    started = time.perf_counter()
    shared = Classifier(args.model)
    load_shared = time.perf_counter() - started
    if not isinstance(shared._forward, HeadRuntime):
        sys.exit("error: not a quick model with its backbone's flatbuffer cached")
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints its intermediate export
        flatbuffer = tf.lite.TFLiteConverter.from_keras_model(with_outputs(shared.model)).convert()
    own = LiteRuntime(flatbuffer)
    convert = time.perf_counter() - started

    dataset = load_dataset(args.data)
    photos = dataset.load_photos(range(16), shared.size).astype(np.float32)
    keras = Classifier(args.model, runtime="keras")._forward(photos)[2]
    gap_shared = float(np.abs(shared._forward(photos)[2] - keras).max())
    gap_own = float(np.abs(own(photos)[2] - keras).max())

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    print(f"model `{shared.name}` (quick, backbone `{shared.card.training.backbone}`), commit {commit.strip()}\n")
    print("| first use of a quick model | seconds | max abs difference from Keras (16 photos) |\n|---|---:|---:|")
    print(f"| Classifier through the backbone's cached flatbuffer (now) | {load_shared:.1f} | {gap_shared:.1e} |")
    print(f"| converting its own graph to LiteRT (before) | {convert:.1f} | {gap_own:.1e} |")


if __name__ == "__main__":
    main()
