"""The exported formats on this machine: size, latency for one photo, and quality against the Keras model.

    python benchmarks/export.py --data DIR [--model DIR] [--repeats 50]

Exports the model (the shipped one by default) into a temporary folder as a SavedModel and as
TF Lite float16 and int8 files (model/export.py), then, on the 400 contract test photos:
- latency for one photo, median over --repeats calls after a warm-up, all measured in this run:
  the SavedModel's serving_default from JPEG bytes (in-graph decoding and letterbox), the TF Lite
  interpreters' invoke() on pixels already preprocessed by model/preprocess.py, and the Keras
  model both ways for reference;
- Hamming loss and exact match under the model's thresholds.json (model.metrics.evaluate), and
  their change against the Keras model, with the largest probability difference.
Prints a markdown table for docs/benchmarks.md.
"""

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import median_ms  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def size_mb(path):
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def tflite_runner(path):
    """(invoke one preprocessed photo, probabilities for many) for a .tflite file."""
    import numpy as np
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = inp["quantization"]

    def prepare(image):
        if inp["dtype"] == np.float32:
            return image[None].astype(np.float32)
        info = np.iinfo(inp["dtype"])
        return np.clip(np.round(image / scale + zero_point), info.min, info.max).astype(inp["dtype"])[None]

    def one(image):
        interpreter.set_tensor(inp["index"], prepare(image))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])[0].copy()

    return one, lambda images: np.array([one(image) for image in images])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", help="dataset directory (default: $MIML_DATA)")
    p.add_argument("--model", help="model directory (default: the shipped model)")
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    import numpy as np
    import tensorflow as tf

    from model.data import load_dataset, split
    from model.export import TFLITE_FILES, export
    from model.inference import Classifier
    from model.modeldir import SHIPPED_MODEL_DIR

    dataset = load_dataset(args.data)
    classifier = Classifier(args.model)
    test_idx = split(len(dataset.images))[2]
    truth = dataset.labels[test_idx]
    raw = [dataset.path(i).read_bytes() for i in test_idx]
    pixels = dataset.load_photos(test_idx, classifier.size)
    photo, photo_pixels = raw[0], pixels[0]  # a typical test photo, as in benchmarks/serving.py

    def quality(probs):
        m = classifier.evaluate(truth, probs)
        return m["hamming_loss"], m["exact_match"]

    keras_probs = classifier.probabilities(pixels)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print("exporting...", file=sys.stderr, flush=True)
        export(args.model, "saved_model", Path(tmp) / "saved_model")
        export(args.model, "tflite", Path(tmp) / "tflite", data=args.data)

        serve = tf.saved_model.load(str(Path(tmp) / "saved_model")).signatures["serving_default"]
        saved_probs = np.concatenate(
            [serve(image_bytes=tf.constant(raw[i : i + 50]))["probabilities"].numpy() for i in range(0, len(raw), 50)]
        )
        model_keras = Path(args.model or SHIPPED_MODEL_DIR) / "model.keras"
        print("timing...", file=sys.stderr, flush=True)
        rows.append(
            (
                "Keras `model.keras` (reference)",
                size_mb(model_keras),
                "JPEG bytes: Pillow preprocessing + forward",
                median_ms(lambda: classifier.probabilities(classifier.load(photo)[None]), args.repeats),
                keras_probs,
            )
        )
        rows.append(
            (
                "Keras `model.keras` (reference)",
                size_mb(model_keras),
                "preprocessed pixels: forward only",
                median_ms(lambda: classifier.probabilities(photo_pixels[None]), args.repeats),
                keras_probs,
            )
        )
        rows.append(
            (
                "SavedModel `serving_default`",
                size_mb(Path(tmp) / "saved_model"),
                "JPEG bytes: in-graph decode + letterbox + forward + labels",
                median_ms(lambda: serve(image_bytes=tf.constant([photo])), args.repeats),
                saved_probs,
            )
        )
        for kind in ("float16", "int8"):
            path = Path(tmp) / "tflite" / TFLITE_FILES[kind]
            one, many = tflite_runner(path)
            rows.append(
                (
                    f"TF Lite {kind} `{path.name}`",
                    size_mb(path),
                    "preprocessed pixels: `invoke()`",
                    median_ms(lambda one=one: one(photo_pixels), args.repeats),
                    many(pixels),
                )
            )

    base_hamming, base_exact = quality(keras_probs)
    print(
        f"\n{len(test_idx)} contract test photos; latency = median of {args.repeats} calls for one photo "
        f"on {os.cpu_count()} CPU cores (TF {tf.__version__}, TF Lite interpreter with its default threads)\n"
    )
    print(
        "| Model | Size (MB) | Timed | Latency, one photo (ms) | Largest abs. probability diff. vs Keras "
        "| Hamming loss (change) | Exact match (change) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, size, timed, latency, probs in rows:
        hamming, exact = quality(probs)
        diff = float(np.abs(probs - keras_probs).max())
        print(
            f"| {name} | {size:.1f} | {timed} | {latency:.1f} | {diff:.4f} | {hamming:.4f} ({hamming - base_hamming:+.4f}) "
            f"| {exact:.4f} ({exact - base_exact:+.4f}) |"
        )


if __name__ == "__main__":
    main()
