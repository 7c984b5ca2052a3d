"""The model as a download: a folder (or ZIP) anyone can run with `pip install openvino numpy pillow`.

    model.xml, model.bin  OpenVINO IR, float32 weights (OpenVINO picks bf16 itself on CPUs that have it)
    model.tflite          the same network as a TensorFlow Lite float32 flatbuffer (ai-edge-litert)
    labels.json           labels, tuned thresholds, "at least one label", input size, test-time augmentation
    README.md             what each file is and how to run it
    predict.py            python predict.py PHOTO ...: prints the labels the app shows (model/bundle_predict.py)

Both model files are the ones Classifier caches (three outputs: the last feature map, the pooled embedding, the
probabilities; flip TTA inside when the model uses it). The ZIP is built once per model file and TTA mode and
cached beside them, so a download is a file sent from disk.
"""

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from model.modeldir import write_atomically

PREDICT = Path(__file__).with_name("bundle_predict.py")
VERSION = 1  # in the cached ZIP's key: raise it when the bundle's files change

README = """# {name}: a MIML Scenes model

Labels: {labels}.

    python -m venv venv && venv/bin/pip install openvino numpy pillow   # or ai-edge-litert instead of openvino
    venv/bin/python predict.py photo.jpg [more.jpg ...]

prints each photo's labels (those at or above their tuned thresholds in labels.json) and probabilities,
as the MIML Scenes app shows them.

Files:
- `model.xml`, `model.bin`: OpenVINO IR (float32 weights; OpenVINO runs bf16 on CPUs with AMX or AVX-512 bf16).
- `model.tflite`: the same network for LiteRT / TensorFlow Lite, float32.
- `labels.json`: the labels in output order, each label's threshold, `at_least_one` (when no label reaches its
  threshold, predict the most probable one), the input size and the test-time augmentation built in.
- `predict.py`: the preprocessing and the thresholds in 40 lines.

Input: `image`, float32 [batch, {size}, {size}, 3], RGB 0..255: the photo turned upright (EXIF), its longer side
resized to {size} px (Pillow bicubic), centred on a grey (127) square; the normalisation is inside the model.
Outputs, in order: the last feature map [batch, h, w, channels], the pooled embedding [batch, channels] (for
similar-photo search) and the probabilities [batch, {n}], one sigmoid per label.{tta}
Not mirrored from the app: transparent pixels are composited on black rather than grey, and 16-bit images go
through Pillow's own conversion.
"""


def labels_json(labels, thresholds, at_least_one, size, tta):
    """labels.json's contents: `thresholds` a {label: threshold} dict."""
    return {
        "labels": list(labels),
        "thresholds": {label: float(thresholds[label]) for label in labels},
        "at_least_one": bool(at_least_one),
        "input_size": int(size),
        "tta": tta,
        "outputs": ["feature_map", "embedding", "probabilities"],
    }


def write_bundle(folder, name, ir_xml, flatbuffer, meta):
    """The bundle's files into `folder` (which exists)."""
    folder = Path(folder)
    shutil.copyfile(ir_xml, folder / "model.xml")
    shutil.copyfile(Path(ir_xml).with_suffix(".bin"), folder / "model.bin")
    (folder / "model.tflite").write_bytes(flatbuffer)
    (folder / "labels.json").write_text(json.dumps(meta, indent=2) + "\n")
    tta = " Each photo and its mirror image are averaged inside the model." if meta["tta"] == "flip" else ""
    readme = README.format(
        name=name, labels=", ".join(meta["labels"]), size=meta["input_size"], n=len(meta["labels"]), tta=tta
    )
    (folder / "README.md").write_text(readme)
    shutil.copyfile(PREDICT, folder / "predict.py")
    return sorted(folder.iterdir())


def bundle_zip(path, name, ir_xml, flatbuffer, meta):
    """Write `path`, a ZIP of the bundle in a folder named `name`, atomically."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_bundle(tmp, name, ir_xml, flatbuffer, meta)
        zipped = Path(tmp) / "bundle.zip"
        with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for f in files:
                z.write(f, f"{name}/{f.name}")
        write_atomically(path, zipped.read_bytes())
    return path
