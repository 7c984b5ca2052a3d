"""Export a model directory for serving without this project's Python code.

    python -m model.export [--model DIR] --format saved_model|tflite|bundle --out DIR [--data DIR] [--calibration N]

saved_model
    A TensorFlow SavedModel for TF Serving (or `tf.saved_model.load`). Its `serving_default`
    signature takes encoded photos and does the preprocessing in the graph, so a client
    sends file bytes and needs no image code:

      input   image_bytes     tf.string  [batch]          JPEG, PNG, GIF, BMP or WebP file bytes
      output  probabilities   float32    [batch, labels]  one sigmoid per label
              labels          tf.string  [batch, labels]  the label names, in the order of the
                                                          probabilities' columns (the same in every row)
              predicted       tf.string  [batch, labels]  the names of the labels predicted under the
                                                          model's thresholds.json (tuned thresholds and,
                                                          if set there, "at least one label"), in label
                                                          order, padded with "" to the number of labels

    Every output is a dense tensor with the batch as its first dimension, so TF Serving's
    REST API can answer in the row ("instances") format, one object per photo, e.g.
    {"probabilities": [0.01, 0.93, 0.02, 0.05, 0.41], "labels": ["desert", "mountains", "sea",
    "sunset", "trees"], "predicted": ["mountains", "trees", "", "", ""]}.
    A photo that cannot be decoded, or has more than preprocess.MAX_PIXELS pixels, fails the
    whole request (InvalidArgumentError; TF Serving answers 400 with the message).
    `preprocess` (bytes [batch] -> uint8 [batch, size, size, 3]) is also saved, as a callable of
    the loaded object (not a serving signature), to check the in-graph preprocessing.

    The in-graph preprocessing mirrors model/preprocess.py (Pillow 13, as pinned) pixel for pixel:
    - decoding: JPEG with libjpeg's accurate integer DCT, as Pillow does (TF's default DCT differs
      by up to 5 grey levels), and a JPEG at least 8x the input size at the same 1/2, 1/4 or 1/8
      DCT scale Pillow's draft() picks (decode_jpeg's `ratio`); other formats with tf.io.decode_image(channels=0,
      expand_animations=False), i.e. the first frame of an animation, then greyscale to RGB and
      transparent pixels composited on neutral grey (127) as preprocess.py does;
    - letterbox: the longer side becomes the model's input size, keeping the aspect ratio, centred
      on a grey (127) square canvas. The resize is Pillow's own antialiased bicubic
      (Image.resize(..., BICUBIC, reducing_gap=3.0)) rebuilt from TF ops: the same box reduce()
      for large photos, the same float64 coefficients in 22-bit fixed point, the same pass order
      and rounding. tf.image.resize(method="bicubic", antialias=True), the obvious alternative,
      differs by up to 18 grey levels at sharp edges (Pillow clips and rounds between its two
      passes), which moved probabilities by up to 0.011 on the contract test photos.
    On all 2000 MIML photos, and on generated photos from 1x1 to 5000x200 and 4032x3024, the
    pixels equal preprocess.load_image's exactly, so the probabilities equal the Keras path's.
    Not mirrored: EXIF orientation is NOT applied in the graph (a phone photo stored sideways
    with an EXIF orientation tag is classified as stored: send it upright), TIFF is not decoded,
    GIF transparency is ignored, HEIC and AVIF are not decoded, and 16-bit PNGs are reduced to
    8 bits by TF (up to 2 levels off). The pixel limit is checked from the header before decoding JPEG and PNG, after
    decoding for the other formats.

tflite
    Two TensorFlow Lite files for on-device use. TF Lite cannot decode images, so both take the
    photo already preprocessed by model/preprocess.py (load_image: letterboxed RGB at the input
    size), one photo per call, and return float32 probabilities [1, labels]:
      model_float16.tflite  post-training float16 quantization (weights stored as float16);
                            input float32 [1, size, size, 3] with values 0..255;
      model_int8.tflite     post-training full-integer quantization, calibrated on --calibration
                            training photos of the contract split (never validation or test);
                            input uint8 [1, size, size, 3]: quantize with the input tensor's
                            (scale, zero_point), which is (1.0, 0) when the calibration photos span
                            0..255 (they do on MIML), i.e. the pixels go in as they are.
    Apply thresholds.json to the probabilities to get labels.

bundle
    The model as the app's Download button gives it (model/bundle.py), unzipped: OpenVINO IR (model.xml,
    model.bin) and a TFLite float32 flatbuffer (model.tflite), each with three outputs (last feature map,
    pooled embedding, probabilities) and float32 [batch, size, size, 3] 0..255 pixels in; labels.json;
    README.md; predict.py, which needs only openvino (or ai-edge-litert), numpy and pillow and prints the
    labels the app shows.

saved_model and tflite get a copy of thresholds.json (label names, thresholds, at_least_one). The export is
written to a temporary sibling `OUT.partial-write` and renamed into place, so a failed run leaves
an earlier export intact; an existing OUT is replaced only if it holds an earlier export.
"""

import argparse
import contextlib
import io
import os
import shutil
import sys
import warnings
from pathlib import Path

from model.cli import add_verbose_flag, quiet_tensorflow
from model.modeldir import ModelDirError, SHIPPED_MODEL_DIR, atomic_dir, read_model_dir
from model.graph_preprocess import preprocess_graph

FORMATS = ["saved_model", "tflite", "bundle"]
TFLITE_FILES = {"float16": "model_float16.tflite", "int8": "model_int8.tflite"}
CALIBRATION_PHOTOS = 100


class ExportError(Exception):
    """Something about the output or the inputs makes the export impossible; the message names the path."""


# ---------------------------------------------------------------- SavedModel


def build_serving_module(model, labels, thresholds, at_least_one):
    """A tf.Module whose `serve` is the serving_default signature described in the module docstring."""
    import numpy as np
    import tensorflow as tf

    size = int(model.input_shape[1])
    n_labels = len(labels)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__(name="miml_serving")
            self.model = model
            self.labels = tf.constant(labels, tf.string)
            self.thresholds = tf.constant(np.asarray(thresholds, np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def preprocess(self, image_bytes):
            return tf.map_fn(
                lambda data: preprocess_graph(tf, data, size),
                image_bytes,
                fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
            )

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            pixels = self.preprocess(image_bytes)
            probs = tf.cast(self.model(tf.cast(pixels, tf.float32), training=False), tf.float32)
            mask = probs >= self.thresholds  # float32 against float32, as model.thresholds.apply_thresholds
            if at_least_one:
                empty = tf.logical_not(tf.reduce_any(mask, axis=1, keepdims=True))
                top = tf.one_hot(tf.argmax(probs, axis=1), n_labels, on_value=True, off_value=False, dtype=tf.bool)
                mask = tf.logical_or(mask, tf.logical_and(empty, top))
            batch = tf.shape(probs)[0]
            names = tf.tile(self.labels[None], [batch, 1])
            # Predicted labels first (stable, so in label order), then the rest blanked out.
            index = tf.range(n_labels)[None]
            order = tf.argsort(tf.where(mask, index, index + n_labels), axis=1, stable=True)
            predicted = tf.where(tf.gather(mask, order, batch_dims=1), tf.gather(names, order, batch_dims=1), "")
            return {"probabilities": probs, "labels": names, "predicted": predicted}

    return Serving()


def export_saved_model(model, labels, thresholds, at_least_one, out):
    import tensorflow as tf

    module = build_serving_module(model, labels, thresholds, at_least_one)
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve.get_concrete_function()})


# ---------------------------------------------------------------- TF Lite


def export_tflite(model, calibration_images, out):
    """Write model_float16.tflite and model_int8.tflite into `out`; `calibration_images` is uint8 (n, size, size, 3)."""
    import numpy as np
    import tensorflow as tf

    def converter():
        # from_keras_model freezes the weights into the file; a tf.Module wrapping the Keras 3 model and
        # converted from a SavedModel or concrete function keeps them as resource variables instead,
        # which the int8 calibrator cannot run (READ_VARIABLE fails) and float16 would not shrink.
        return tf.lite.TFLiteConverter.from_keras_model(model)

    def convert(configured):
        # Keras prints its whole intermediate export (hundreds of lines) to stdout; keep the CLI's output readable.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return configured.convert()

    fp16 = converter()
    fp16.optimizations = [tf.lite.Optimize.DEFAULT]
    fp16.target_spec.supported_types = [tf.float16]
    (out / TFLITE_FILES["float16"]).write_bytes(convert(fp16))

    def representative():
        for image in calibration_images:
            yield [image[None].astype(np.float32)]

    int8 = converter()
    int8.optimizations = [tf.lite.Optimize.DEFAULT]
    int8.representative_dataset = representative
    int8.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    int8.inference_input_type = tf.uint8  # 0..255 pixels; the output stays float32 probabilities
    (out / TFLITE_FILES["int8"]).write_bytes(convert(int8))


def calibration_photos(dataset, size, n=CALIBRATION_PHOTOS):
    """The first `n` training photos of the contract split, preprocessed as for training."""
    from model.data import split

    train_idx = split(len(dataset.images))[0]
    return dataset.load_photos(train_idx[:n], size)


# ---------------------------------------------------------------- output directory


def _looks_like_export(path):
    if (path / "labels.json").is_file() and (path / "predict.py").is_file():  # a bundle
        return True
    return (path / "thresholds.json").is_file() and (
        (path / "saved_model.pb").is_file() or any((path / f).is_file() for f in TFLITE_FILES.values())
    )


def check_output(out):
    """Raise ExportError unless `out` is absent, empty or an earlier export (which may then be replaced)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _looks_like_export(out):
        raise ExportError(f"{out}: exists, is not empty and is not an earlier export; choose another --out")


def export_tensorflow(info, fmt, out, dataset, calibration):
    """The saved_model or tflite export of model directory `info` into the folder `out`, with thresholds.json."""
    model = info.load_keras()
    if model.output_shape[-1] != len(info.labels):
        raise ModelDirError(
            f"{info.path / 'model.keras'}: has {model.output_shape[-1]} outputs "
            f"but thresholds.json names {len(info.labels)} labels"
        )
    if info.tta == "flip":  # the thresholds were tuned on the mean with the mirror
        from model.network import flip_tta

        model = flip_tta(model)
    if fmt == "saved_model":
        export_saved_model(model, info.labels, info.thresholds, info.at_least_one, out)
    else:
        export_tflite(model, calibration_photos(dataset, int(model.input_shape[1]), calibration), out)
    shutil.copyfile(info.path / "thresholds.json", out / "thresholds.json")


def check_inputs(model_dir, fmt, out, data=None):
    """(model directory, absolute out, dataset or None) for an export, all checked without TensorFlow: the model
    directory, the calibration dataset (tflite only) and `out`.

    Raises ModelDirError, model.data.DataError or ExportError with a message naming the path.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    info = read_model_dir(model_dir)
    out = Path(os.path.abspath(out))
    dataset = None
    if fmt == "tflite":
        from model.data import load_dataset

        dataset = load_dataset(data)  # calibration photos for the int8 model; fail before any slow work
    check_output(out)
    return info, out, dataset


def export(model_dir, fmt, out, data=None, calibration=CALIBRATION_PHOTOS):
    """Export `model_dir` as `fmt` into `out` (atomically). Returns the files written.

    Raises ModelDirError, model.data.DataError or ExportError with a message naming the path.
    """
    info, out, dataset = check_inputs(model_dir, fmt, out, data)
    try:
        with atomic_dir(out) as tmp:
            if fmt == "bundle":
                from model.inference import Classifier

                Classifier(model_dir, runtime="litert").write_bundle(tmp)
            else:
                export_tensorflow(info, fmt, tmp, dataset, calibration)
    except OSError as e:
        where = f" at {e.filename}" if e.filename else ""
        raise ExportError(f"{out}: cannot write the export there ({e.strerror or e}{where})") from None
    return sorted(p for p in out.rglob("*") if p.is_file())


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like the other errors, instead of usage + message
        sys.exit(f"error: {message} (see python -m model.export --help)")


def main(argv=None):
    p = _Parser(
        prog="python -m model.export",
        description="Export a model directory as a TensorFlow SavedModel (for TF Serving) or TF Lite files.",
    )
    p.add_argument("--model", default=str(SHIPPED_MODEL_DIR), help="model directory (default: the shipped model)")
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="saved_model: bytes in, labels out; tflite: float16 and int8 files taking preprocessed pixels; "
        "bundle: OpenVINO IR + TFLite float32 + labels.json + predict.py, the app's download",
    )
    p.add_argument("--out", required=True, help="directory to write (replaced if it holds an earlier export)")
    p.add_argument("--data", help="dataset for the int8 calibration photos (tflite only; default: $MIML_DATA)")
    p.add_argument(
        "--calibration",
        type=int,
        default=CALIBRATION_PHOTOS,
        help=f"number of training photos to calibrate the int8 model on (default {CALIBRATION_PHOTOS})",
    )
    add_verbose_flag(p)
    args = p.parse_args(argv)
    if args.calibration < 1:
        p.error("argument --calibration: must be at least 1")
    from model.data import DataError

    try:
        check_inputs(args.model, args.format, args.out, args.data)  # a bad input: one line before TensorFlow starts
        quiet_tensorflow(args.verbose)
        files = export(args.model, args.format, args.out, args.data, args.calibration)
    except (ModelDirError, DataError, ExportError) as e:
        sys.exit(f"error: {e}")
    out = Path(os.path.abspath(args.out))
    for f in files:
        print(f"{f.relative_to(out.parent)}  {f.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
