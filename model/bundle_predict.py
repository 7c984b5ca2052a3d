"""Label photos with this model: python predict.py PHOTO [PHOTO ...]  (needs numpy, pillow and openvino or ai-edge-litert)"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
META = json.loads((HERE / "labels.json").read_text())
SIZE, LABELS, THRESHOLDS = META["input_size"], META["labels"], np.array([META["thresholds"][k] for k in META["labels"]])


def load(path):  # the photo as the app prepares it: upright, longer side SIZE (bicubic), centred on grey 127
    im = Image.open(path)
    if im.format == "JPEG" and max(im.size) >= 8 * SIZE:  # a large JPEG decodes at 1/4 or 1/8 scale, as in the app
        im.draft("RGB", tuple(max(1, round(n * 2 * SIZE / max(im.size))) for n in im.size))
    im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = (max(1, round(n * SIZE / max(im.size))) for n in im.size)
    canvas = Image.new("RGB", (SIZE, SIZE), (127, 127, 127))
    canvas.paste(im.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0), ((SIZE - w) // 2, (SIZE - h) // 2))
    return np.asarray(canvas, np.float32)[None]


try:  # the model's outputs: last feature map, pooled embedding, probabilities
    import openvino as ov

    model = ov.Core().compile_model(HERE / "model.xml", "CPU")
    forward = lambda x: model(x)[model.output(2)][0]  # noqa: E731
except ImportError:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(HERE / "model.tflite")).get_signature_runner()
    forward = lambda x: runner(image=x)["output_2"][0]  # noqa: E731
for path in sys.argv[1:]:
    p = forward(load(path))
    on = (p >= THRESHOLDS) | (META["at_least_one"] and not (p >= THRESHOLDS).any() and np.arange(len(p)) == p.argmax())
    names = ", ".join(label for label, o in zip(LABELS, on) if o) or "(no label)"
    print(f"{path}: {names}  (" + " ".join(f"{label} {x:.2f}" for label, x in zip(LABELS, p)) + ")")
