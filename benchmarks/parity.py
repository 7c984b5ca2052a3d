"""The parity gate's numbers (model/parity.py) for every runtime and precision, on the 400 contract test photos.

    python benchmarks/parity.py --data DIR [--model DIR]

Against Keras float32: LiteRT float32, OpenVINO float32, bf16 (where the CPU has it) and int8 (where
`python -m model.quantize` has made it). Prints a markdown table; a row's last cell says if it passes.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--model")
    args = p.parse_args()
    from model.cli import quiet_tensorflow

    quiet_tensorflow()
    from model.data import load_dataset, split
    from model.inference import Classifier
    from model.modeldir import ModelDirError
    from model.openvino_runtime import cpu_precisions
    from model.parity import compare, outputs

    dataset = load_dataset(args.data)
    test_idx = split(len(dataset.images))[2]
    keras = Classifier(args.model, runtime="keras")
    pixels, truth = dataset.load_photos(test_idx, keras.size), dataset.labels[test_idx]
    reference = outputs(keras, pixels)
    print(
        "| Runtime | Decisions changed | mAP diff | Hamming diff | Top-5 similar overlap | Class-map correlation "
        "| Max probability diff | Gate |\n|---|---:|---:|---:|---:|---:|---:|---|"
    )
    for runtime, precision in [("litert", "f32")] + [("openvino", p) for p in cpu_precisions()]:
        try:
            candidate = Classifier(args.model, runtime=runtime, precision=precision)
        except ModelDirError as e:
            print(f"| {runtime} {precision} | {e} |||||||")
            continue
        r = compare(keras, truth, reference, outputs(candidate, pixels))
        print(
            f"| {runtime} {precision} | {r.decisions_changed} of {r.decisions} | {r.map_diff:.4f} | "
            f"{r.hamming_diff:.4f} | {r.similar_overlap:.1%} | {r.cam_correlation:.4f} | "
            f"{r.max_probability_diff:.2g} | {'passes' if r.passes else 'fails'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
