"""int8 for OpenVINO: post-training quantization (NNCF) calibrated on training photos only.

    python -m model.quantize [--model DIR] [--data DIR] [--calibration 300]

Quantizes the model's float32 IR (model/openvino_runtime.py) with `nncf.quantize`, calibrated on the first
--calibration photos of the contract split's training part (never validation or test), and caches the int8 IR
beside the float32 one; `--precision int8` then serves it. int8 does not pass the parity gate on the shipped
model (docs/runtime.md), so `auto` never picks it. Needs `pip install -r requirements-int8.txt`.
"""

import argparse

from model.cli import add_verbose_flag, exit_with, quiet_tensorflow
from model.data import DataError, load_dataset
from model.export import calibration_photos
from model.modeldir import ModelDirError, SHIPPED_MODEL_DIR, read_model_dir

CALIBRATION_PHOTOS = 300


def quantize(model_dir=None, data=None, calibration=CALIBRATION_PHOTOS):
    """The int8 IR of `model_dir` (in the model's TTA mode), written to the cache; returns its path."""
    try:
        import nncf
    except ImportError:
        raise ModelDirError("int8 needs NNCF: pip install -r requirements-int8.txt -c constraints.txt") from None
    import numpy as np
    import openvino as ov

    from model.inference import Classifier, with_outputs
    from model.openvino_runtime import ir_path, openvino_ir, save_ir

    dataset = load_dataset(data)
    clf = Classifier(model_dir, runtime="openvino", precision="f32")
    photos = calibration_photos(dataset, clf.size, calibration)  # as the TF Lite int8 export calibrates
    xml = openvino_ir(lambda: with_outputs(clf.model, clf.tta), clf.info.sha256, clf.tta)
    calibration_set = nncf.Dataset(list(photos), lambda x: x[None].astype(np.float32))
    quantized = nncf.quantize(ov.Core().read_model(xml), calibration_set, subset_size=len(photos))
    return save_ir(quantized, ir_path(clf.info.sha256, clf.tta, "int8"))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.quantize", description="Make the int8 OpenVINO model.")
    p.add_argument("--model", default=str(SHIPPED_MODEL_DIR), help="model directory (default: the shipped model)")
    p.add_argument("--data", help="dataset with the training photos (default: $MIML_DATA)")
    p.add_argument("--calibration", type=int, default=CALIBRATION_PHOTOS, help="training photos to calibrate on")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    if args.calibration < 1:
        p.error("--calibration must be at least 1")
    try:
        load_dataset(args.data)  # a bad dataset or model directory: one line before TensorFlow starts
        read_model_dir(args.model)
        quiet_tensorflow(args.verbose)
        print(quantize(args.model, args.data, args.calibration))
    except (DataError, ModelDirError) as e:
        exit_with(e, args.verbose)


if __name__ == "__main__":
    main()
