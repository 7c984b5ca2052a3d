"""The one-forward-pass serving path against the code before it, side by side in one run.

    python benchmarks/fast_path.py --data DIR [--baseline-rev 98a0fa5] [--repeats 40]

The baseline is an earlier commit of this repository (default: the last one before the LiteRT
runtime), unpacked with `git archive` into a temporary folder; both run the same shipped model.
Each server is started in turn with `python visualization.py` on a free loopback port and measured
alone (medians):
- `POST /api/predict` of a MIML test photo and of a 12-megapixel phone-size JPEG (a MIML photo
  upscaled to 4000 x 3000), and the upload page's analysis of one photo (`POST /`: probabilities
  and every label's class map rendered);
- requests per second of 1 sequential client against 8 concurrent clients, and the server's RSS
  after warm-up and after 2000 requests (current code: both pool layouts).
In this process: the bare Keras `predict_on_batch` of the model, the LiteRT forward pass, the
model's FLOPs against the measured float32 matmul throughput (the compute bound), and LiteRT's raw
throughput for pool layouts (interpreters x threads, 1 or 2 callers) and for micro-batching (one
interpreter invoked on two photos at once).
In a fresh process in each folder: batch prediction of all the dataset's photos (photos/s), now also
with one pass a photo (`--tta none`) where the model's own setting is flip TTA.
Prints markdown tables for the README.
"""

import argparse
import io
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import call, in_threads, median_ms, multipart, rss_mb, start_server  # noqa: E402

BATCH_SNIPPET = """
import sys, time
from pathlib import Path
from model.batch import predict_paths
from model.inference import Classifier
classifier = Classifier(**({"tta": sys.argv[2]} if len(sys.argv) > 2 else {}))  # the baseline has no tta
paths = sorted(Path(sys.argv[1]).glob("*.jpg"))
list(predict_paths(classifier, paths[:64], 32))  # warm-up
started = time.perf_counter()
n = sum(1 for r in predict_paths(classifier, paths, 32) if "error" not in r)
print(n / (time.perf_counter() - started))
"""


def http_medians(port, photo, phone, repeats):
    body, headers = multipart("photo.jpg", photo)
    big, big_headers = multipart("phone.jpg", phone)
    fetch = {**headers, "X-Requested-With": "fetch"}
    return {
        "predict": median_ms(lambda: call(port, "POST", "/api/predict", body, headers, expect=200), repeats),
        "predict_12mp": median_ms(lambda: call(port, "POST", "/api/predict", big, big_headers, expect=200), repeats),
        "upload_page": median_ms(lambda: call(port, "POST", "/", body, fetch, expect=200), repeats),
    }


def requests_per_second(port, photos, clients, total):
    """Requests/s of `clients` threads sending `total` predictions of `photos` between them."""
    bodies = [multipart(f"{i}.jpg", p) for i, p in enumerate(photos)]
    counter, lock = iter(range(total)), threading.Lock()

    def client():
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            call(port, "POST", "/api/predict", *bodies[n % len(bodies)], expect=200)

    return total / in_threads(client, clients)


def measure_server(root, args, photo, phone, photos, extra=()):
    proc, port = start_server(root, ["--data", args.data, *extra])
    try:
        out = http_medians(port, photo, phone, args.repeats)
        out["rss_warm"] = rss_mb(proc.pid)
        out["rps_1"] = requests_per_second(port, photos, 1, 200)
        out["rps_8"] = requests_per_second(port, photos, 8, 2000)
        out["rss_after"] = rss_mb(proc.pid)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def model_flops(model):
    """Multiply-adds x 2 of the convolutions and dense layers for one photo."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            kh, kw = layer.kernel_size
            out = layer.output.shape  # (None, h, w, c)
            per_output = kh * kw * (1 if isinstance(layer, keras.layers.DepthwiseConv2D) else layer.input.shape[-1])
            flops += 2 * out[1] * out[2] * out[3] * per_output
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return flops


def matmul_gflops(n=2048, repeats=10):
    import tensorflow as tf

    a = tf.random.uniform((n, n))
    ms = median_ms(lambda: tf.linalg.matmul(a, a).numpy(), repeats)
    return 2 * n**3 / (ms / 1000) / 1e9


def in_process(photo, repeats):
    from model.inference import Classifier, LiteRuntime, litert_flatbuffer, with_outputs

    lite = Classifier()
    pixels = lite.load(photo)[None]
    batch = pixels.astype(np.float32)
    rows = {
        "keras_pob": median_ms(lambda: lite.model.predict_on_batch(batch), repeats),
        "litert_forward": median_ms(lambda: lite.forward(pixels), repeats),
        "in_process": median_ms(lambda: lite.classify(lite.load(photo)[None]), repeats),
        "analyse": median_ms(lambda: lite.analyse(photo), repeats),
    }
    m = lite.model
    flatbuffer = litert_flatbuffer(lambda: with_outputs(m, lite.tta), lite.info.sha256, lite.tta)

    def rate(runtime, callers, images, n=60):
        """Photos/s of `callers` threads each invoking `runtime` n times on `images`."""

        def loop():
            for _ in range(n):
                runtime(images)

        runtime(images)
        return callers * n * len(images) / in_threads(loop, callers)

    for workers, threads in ((1, 2), (2, 1), (2, 2)):
        runtime = LiteRuntime(flatbuffer, workers=workers, threads=threads)
        rows[f"pool_{workers}x{threads}"] = (rate(runtime, 1, batch), rate(runtime, 2, batch))
    rows["microbatch_2"] = rate(LiteRuntime(flatbuffer, workers=1, threads=2), 1, np.repeat(batch, 2, axis=0))
    rows["flops"] = model_flops(m) * (2 if lite.tta == "flip" else 1)  # flip TTA: two passes a photo
    rows["matmul_gflops"] = matmul_gflops()
    return rows


def batch_rate(root, folder, *tta):
    out = subprocess.run(
        [sys.executable, "-c", BATCH_SNIPPET, str(folder), *tta],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    return float(out.stdout.split()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--baseline-rev", default="98a0fa5")
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args()
    from PIL import Image
    from model.data import load_dataset, split

    dataset = load_dataset(args.data)
    test_idx = split(len(dataset.images))[2]
    photo = dataset.path(int(test_idx[0])).read_bytes()
    photos = [dataset.path(int(i)).read_bytes() for i in test_idx[:20]]
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(
        buf, "JPEG", quality=90
    )
    phone = buf.getvalue()

    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        baseline.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline_rev], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
        old = measure_server(baseline, args, photo, phone, photos)
        new = measure_server(ROOT, args, photo, phone, photos, ["--no-explore"])
        one_interpreter = measure_server(ROOT, args, photo, phone, photos, ["--no-explore", "--workers", "1"])
        old_batch, new_batch = (
            batch_rate(baseline, Path(args.data) / "original"),
            batch_rate(ROOT, Path(args.data) / "original"),
        )
        one_pass_batch = batch_rate(ROOT, Path(args.data) / "original", "none")
    local = in_process(photo, args.repeats)

    print(
        f"| Measurement (medians; one run) | before ({args.baseline_rev}) | now | now / before |\n|---|---:|---:|---:|"
    )
    for key, name in (
        ("predict", "`POST /api/predict`, MIML photo (ms)"),
        ("predict_12mp", "`POST /api/predict`, 12 MP JPEG (ms)"),
        ("upload_page", "Upload page analysis, one photo, all class maps rendered (ms)"),
    ):
        print(f"| {name} | {old[key]:.1f} | {new[key]:.1f} | {new[key] / old[key]:.2f}x |")
    print(
        f"| 12 MP JPEG / MIML photo | {old['predict_12mp'] / old['predict']:.2f}x | "
        f"{new['predict_12mp'] / new['predict']:.2f}x | |"
    )
    print(
        f"| Batch prediction, {len(dataset.images)} photos (photos/s) | {old_batch:.1f} | {new_batch:.1f} | {new_batch / old_batch:.2f}x |"
    )
    print(
        f"| Batch prediction, `--tta none` (photos/s) | {old_batch:.1f} | {one_pass_batch:.1f} | {one_pass_batch / old_batch:.2f}x |"
    )
    print(f"| 1 sequential client (requests/s) | {old['rps_1']:.1f} | {new['rps_1']:.1f} | |")
    print(f"| 8 concurrent clients (requests/s) | {old['rps_8']:.1f} | {new['rps_8']:.1f} | |")
    print(f"| 8 clients / 1 client | {old['rps_8'] / old['rps_1']:.2f}x | {new['rps_8'] / new['rps_1']:.2f}x | |")
    print(
        f"| Server RSS after warm-up / after 2200 requests (MB) | {old['rss_warm']:.0f} / {old['rss_after']:.0f} | "
        f"{new['rss_warm']:.0f} / {new['rss_after']:.0f} | |"
    )
    print(
        f"\nServer, pool of 2 interpreters x 2 threads (default): {new['rps_1']:.1f} -> {new['rps_8']:.1f} requests/s "
        f"(1 -> 8 clients), predict {new['predict']:.1f} ms; 1 interpreter x 2 threads: {one_interpreter['rps_1']:.1f} -> "
        f"{one_interpreter['rps_8']:.1f} requests/s, predict {one_interpreter['predict']:.1f} ms."
    )
    print(
        "LiteRT alone, photos/s with 1 / 2 callers: "
        + "; ".join(f"{k[5:]} {local[k][0]:.0f} / {local[k][1]:.0f}" for k in ("pool_1x2", "pool_2x1", "pool_2x2"))
        + f"; micro-batches of 2 photos on one 2-thread interpreter: {local['microbatch_2']:.0f}."
    )
    print(
        f"\nIn process: bare Keras predict_on_batch {local['keras_pob']:.1f} ms; LiteRT forward {local['litert_forward']:.1f} ms; "
        f"JPEG bytes to labels {local['in_process']:.1f} ms; analyse (labels, maps, embedding) {local['analyse']:.1f} ms; "
        f"HTTP predict / bare Keras = {new['predict'] / local['keras_pob']:.2f}x."
    )
    bound_ms = local["flops"] / (local["matmul_gflops"] * 1e9) * 1000
    print(
        f"Compute bound: {local['flops'] / 1e9:.2f} GFLOPs a photo / {local['matmul_gflops']:.0f} GFLOP/s float32 matmul "
        f"= {bound_ms:.2f} ms; the LiteRT forward reaches {bound_ms / local['litert_forward']:.0%} of it."
    )


if __name__ == "__main__":
    main()
