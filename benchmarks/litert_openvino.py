"""LiteRT's Intel OpenVINO dispatch (the "OpenVINO delegate") against LiteRT float32 and OpenVINO (`auto`), side
by side in one run, rounds interleaved, each arm in a fresh process (docs/runtime.md, "LiteRT's Intel OpenVINO
delegate").

    python benchmarks/litert_openvino.py --data DIR --python VENV/bin/python [--app-python VENV2/bin/python]
        [--rounds 3] [--repeats 20] [--parity]

The dispatch libraries ship inside the `ai-edge-litert` wheel but link against OpenVINO 2026.3.1
(`libopenvino.so.2631`), while the app pins `openvino==2026.4.1`; so the delegate arm runs under `--python`, a
virtual environment with `ai-edge-litert`, `numpy` and `openvino==2026.3.1` (what `ai-edge-litert-sdk-intel==2.3.0`
pins). It runs the shipped model's flatbuffer through `CompiledModel` with the NPU accelerator, whose Intel
compiler plugin puts the whole graph on OpenVINO's CPU device (`IntelOpenVinoOptions(graph_backend=CPU)`), bf16
or f32 as asked. A dispatched model keeps the flatbuffer's batch size, so batch 32 gets a flatbuffer converted
with a static batch of 32.

Each round: LiteRT f32 and `auto` (benchmarks/runtime.py --child; with --app-python, `auto` also under that
python: a `--system-site-packages` venv with openvino==2026.3.1, to tell the delegate from the OpenVINO version)
and the delegate in bf16 and f32 (this file with --child): start-up, batch-1 latency, batch-32 throughput, RSS. With --parity, the gate (model/parity.py)
of the delegate's outputs on the 400 contract test photos against Keras float32.
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import median_ms, rss_mb  # noqa: E402  (standard library only: the child's venv has no app)


def compiled(path, precision):
    """The flatbuffer at `path` compiled by LiteRT's Intel OpenVINO plugin for OpenVINO's CPU device."""
    import ai_edge_litert
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.environment import Environment
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, IntelOpenVinoOptions, Options

    intel = IntelOpenVinoOptions(
        graph_backend=IntelOpenVinoOptions.GRAPH_BACKEND.CPU,
        performance_mode=IntelOpenVinoOptions.PERFORMANCE_MODE.LATENCY,
        configs_map={
            "INFERENCE_NUM_THREADS": str(os.cpu_count()),
            "NUM_STREAMS": "1",
            "INFERENCE_PRECISION_HINT": precision,
        },
    )
    options = Options(
        hardware_accelerators=HardwareAccelerator.NPU | HardwareAccelerator.CPU,
        cpu_options=CpuOptions(num_threads=os.cpu_count()),
        intel_openvino_options=intel,
    )
    environment = Environment.create(runtime_path=os.path.dirname(ai_edge_litert.__file__))
    model = CompiledModel.from_file(str(path), options=options, environment=environment)
    if not model.is_fully_accelerated():
        sys.exit("the Intel OpenVINO plugin did not take the whole graph")
    return model


class Delegated:
    """forward(float32 (n, 224, 224, 3)) -> [feature maps, embeddings, probabilities] for a fixed n."""

    def __init__(self, path, precision):
        self.model = compiled(path, precision)
        ((key, signature),) = self.model.get_signature_list().items()
        details = self.model.get_output_tensor_details(key)
        # feature map (4-D), embedding (the wider 2-D), probabilities, whatever the converter named them
        names = sorted(signature["outputs"], key=lambda n: (-len(details[n]["shape"]), -details[n]["shape"][-1]))
        self.key, self.shapes = key, [details[name]["shape"] for name in names]
        self.inputs = {name: self.model.create_input_buffer_by_name(key, name) for name in signature["inputs"]}
        self.outputs = {name: self.model.create_output_buffer_by_name(key, name) for name in names}

    def __call__(self, images):
        import numpy as np

        (buffer,) = self.inputs.values()
        buffer.write(np.ascontiguousarray(images, np.float32))
        self.model.run_by_name(self.key, self.inputs, self.outputs)
        return [b.read(int(np.prod(s)), np.float32).reshape(s) for b, s in zip(self.outputs.values(), self.shapes)]


def child(flat1, flat32, pixels_path, precision, repeats, parity_out=None):
    """In the delegate's venv: start-up, batch-1 latency, batch-32 throughput, RSS (a JSON line on stdout); with
    `parity_out`, the three outputs of every photo in `pixels_path` (batch 1) saved there instead."""
    import numpy as np

    pixels = np.load(pixels_path).astype(np.float32)
    started = time.perf_counter()
    one = Delegated(flat1, precision)
    one(pixels[:1])
    startup = time.perf_counter() - started
    if parity_out:
        outs = [one(pixels[i : i + 1]) for i in range(len(pixels))]
        np.savez(parity_out, *[np.concatenate([o[k] for o in outs]) for k in range(3)])
        return
    batch1 = median_ms(lambda: one(pixels[:1]), repeats)
    many = Delegated(flat32, precision)
    batch32 = 32 / (median_ms(lambda: many(pixels[:32]), max(3, repeats // 4), warmup=1) / 1000)
    out = {"served": f"litert+openvino-dispatch {precision}", "startup_s": startup, "batch1_ms": batch1}
    print(json.dumps(out | {"batch32_per_s": batch32, "rss_mb": rss_mb(os.getpid())}))


def flatbuffers(folder, pixels_path, data):
    """The shipped model's flatbuffer (cached by the app) and one with a static batch of 32; the test photos."""
    import keras
    import numpy as np
    import tensorflow as tf

    from model.data import load_dataset, split
    from model.inference import Classifier, litert_flatbuffer, with_outputs

    clf = Classifier(runtime="litert", precision="f32")
    three = with_outputs(clf.model, clf.tta)
    flat1 = folder / "batch1.tflite"
    flat1.write_bytes(litert_flatbuffer(lambda: three, clf.info.sha256, clf.tta))  # the app's, from its cache
    fixed = keras.Input((clf.size, clf.size, 3), batch_size=32)
    flat32 = folder / "batch32.tflite"
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints its intermediate export
        flat32.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(fixed, three(fixed))).convert())
    dataset = load_dataset(data)
    np.save(pixels_path, dataset.load_photos(split(len(dataset.images))[2], clf.size))
    return flat1, flat32


def run(cmd):
    """The child's JSON line, or {"failed": its last error line} (the dispatch gives up on a pass after 10 s)."""
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        errors = [line for line in r.stderr.splitlines() if "ERROR" in line or "Error" in line] or [r.stderr[-300:]]
        return {"failed": errors[0].strip()}
    return json.loads(r.stdout.strip().splitlines()[-1])


def parity(args, flat1, pixels_path, folder):
    """The gate's numbers for the delegate (bf16 and f32) against Keras float32, as markdown rows."""
    import numpy as np

    from model.data import load_dataset, split
    from model.inference import Classifier
    from model.parity import Outputs, compare, outputs

    dataset = load_dataset(args.data)
    truth = dataset.labels[split(len(dataset.images))[2]]
    pixels = np.load(pixels_path)
    keras = Classifier(runtime="keras")
    reference = outputs(keras, pixels)
    for precision in ("bf16", "f32"):
        out = folder / f"parity-{precision}.npz"
        cmd = [args.python, __file__, "--child", str(flat1), "-", str(pixels_path), precision, "1", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        features, embeddings, probs = (np.load(out)[f"arr_{k}"] for k in range(3))
        cams = np.stack([keras.class_maps(x, f[None]) for x, f in zip(pixels, features)])
        r = compare(keras, truth, reference, Outputs(probs, embeddings, cams))
        print(
            f"| LiteRT + OpenVINO dispatch {precision} | {r.decisions_changed} of {r.decisions} | {r.map_diff:.4f} | "
            f"{r.hamming_diff:.4f} | {r.similar_overlap:.1%} | {r.cam_correlation:.4f} | "
            f"{r.max_probability_diff:.2g} | {'passes' if r.passes else 'fails'} |",
            flush=True,
        )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data")
    p.add_argument("--python", help="a venv's python with ai-edge-litert, numpy and openvino==2026.3.1")
    p.add_argument("--app-python", help="optional: a venv's python with the app's packages and that OpenVINO")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--parity", action="store_true")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        flat1, flat32, pixels, precision, repeats, *out = args.child
        return child(flat1, flat32, pixels, precision, int(repeats), *out)
    from model.cli import quiet_tensorflow

    quiet_tensorflow()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="miml-delegate-") as tmp:
        folder = Path(tmp)
        pixels_path = folder / "pixels.npy"
        flat1, flat32 = flatbuffers(folder, pixels_path, args.data)
        first32 = folder / "first32.npy"
        import numpy as np

        np.save(first32, np.load(pixels_path)[:32])
        app = [sys.executable, str(ROOT / "benchmarks" / "runtime.py"), "--data", args.data, "--repeats"]
        arms = {
            "LiteRT f32 (Interpreter, XNNPACK)": app + [str(args.repeats), "--child", "litert", "f32"],
            "OpenVINO `auto`": app + [str(args.repeats), "--child", "auto", "auto"],
        }
        if args.app_python:  # the app's own OpenVINO runtime on the delegate's OpenVINO version
            version = subprocess.run(
                [args.app_python, "-c", "import openvino; print(openvino.__version__.split('-')[0])"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            arms[f"OpenVINO `auto` on {version}"] = [
                args.app_python,
                *app[1:],
                str(args.repeats),
                "--child",
                "auto",
                "auto",
            ]
        for precision in ("bf16", "f32"):
            arms[f"LiteRT + OpenVINO dispatch {precision}"] = [
                args.python, __file__, "--child", str(flat1), str(flat32), str(first32), precision, str(args.repeats)
            ]  # fmt: skip
        results = {name: [] for name in arms}
        for r in range(args.rounds):
            for name in list(arms) if r % 2 == 0 else list(arms)[::-1]:
                results[name].append(run(["nice", "-n", "10", *arms[name]]))
                print(f"round {r + 1}, {name}: {results[name][-1]}", file=sys.stderr, flush=True)
        report(results, load, os.getloadavg(), args)
        if args.parity:
            print("\n| Runtime | Decisions changed | mAP diff | Hamming diff | Top-5 similar overlap "
                  "| Class-map correlation | Max probability diff | Gate |\n|---|---:|---:|---:|---:|---:|---:|---|")  # fmt: skip
            parity(args, flat1, pixels_path, folder)


def report(results, load, load_after, args):
    names = list(results)
    print(
        f"\nLoad average (1/5/15 min) at the start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, at the end "
        f"{load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}, {os.cpu_count()} cores; {args.rounds} "
        "rounds, interleaved, every arm under nice 10.\n"
    )
    print("| Measurement (median over rounds) | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    done = {name: [row for row in rows if "failed" not in row] for name, rows in results.items()}
    for title, key in [
        ("Start-up to the first answer (s)", "startup_s"),
        ("Forward pass, batch 1 (ms)", "batch1_ms"),
        ("Forward pass, batch 32 (photos/s)", "batch32_per_s"),
        ("RSS after the passes (MB)", "rss_mb"),
    ]:
        base = statistics.median(row[key] for row in done[names[0]])
        cells = [f"{base:.1f}"]
        for name in names[1:]:
            v = statistics.median(row[key] for row in done[name]) if done[name] else float("nan")
            cells.append(f"{v:.1f} ({v / base:.2f}x)")
        print(f"| {title} | " + " | ".join(cells) + " |")
    print("| Rounds that failed | " + " | ".join(str(len(results[n]) - len(done[n])) for n in names) + " |")
    for name, rows in results.items():
        for row in rows:
            if "failed" in row:
                print(f"\n{name} failed: `{row['failed']}`")


if __name__ == "__main__":
    main()
