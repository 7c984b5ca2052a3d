"""Runtimes side by side in one run: LiteRT float32 (before) against OpenVINO (`--runtime auto`) and OpenVINO
float32 (what `auto` picks on a CPU without bf16), rounds interleaved so that all suffer the same load.

    python benchmarks/runtime.py --data DIR [--rounds 2] [--repeats 20] [--batch-photos 500]

Each round measures every runtime, in an order that alternates between rounds, each in fresh processes:
- in process (this file with --child): start-up (Classifier() and its first pass, warm caches), the forward pass at batch 1
  (ms) and batch 32 (photos/s), RSS;
- the batch CLI's pipeline (benchmarks/batch.py's measure: model.batch.predict_paths into a CSV, batch 32, the
  default decode threads) on the first --batch-photos photos of DIR/original, with its peak RSS;
- the server (`python visualization.py --no-explore --runtime R --precision P`, waitress): `POST /api/predict` of
  a MIML test photo and of a 12-megapixel JPEG, the upload page's analysis (benchmarks/fast_path.py), requests
  per second of 1 and of 8 clients, RSS after warm-up and after the requests.
Also the compute bound: the model's FLOPs over TensorFlow's float32 matmul rate, measured in each round.
Prints medians over rounds and ratios against LiteRT, as markdown.
"""

import argparse
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
from benchmarks.common import median_ms, rss_mb, start_server  # noqa: E402
from benchmarks.fast_path import http_medians, matmul_gflops, model_flops, requests_per_second  # noqa: E402

RUNTIMES = [("litert", "f32"), ("auto", "auto"), ("openvino", "f32")]


def child(runtime, precision, data, repeats):
    """In a fresh process: start-up, batch-1 latency, batch-32 throughput, RSS (a JSON line on stdout)."""
    from model.cli import quiet_tensorflow

    quiet_tensorflow()
    from model.data import load_dataset, split
    from model.inference import Classifier

    dataset = load_dataset(data)
    started = time.perf_counter()
    clf = Classifier(runtime=runtime, precision=precision)
    pixels = dataset.load_photos(split(len(dataset.images))[2][:32], clf.size)
    clf.forward(pixels[:1])  # OpenVINO compiles (or loads from its cache) a batch size on its first pass
    startup = time.perf_counter() - started
    batch1 = median_ms(lambda: clf.forward(pixels[:1]), repeats)
    batch32 = 32 / (median_ms(lambda: clf.forward(pixels), max(3, repeats // 4), warmup=1) / 1000)
    served = f"{clf.runtime} {clf.precision}"
    out = {"served": served, "startup_s": startup, "batch1_ms": batch1, "batch32_per_s": batch32}
    print(json.dumps(out | {"rss_mb": rss_mb(os.getpid()), "flops": model_flops(clf.model)}))


def run_child(runtime, precision, args):
    cmd = [sys.executable, __file__, "--child", runtime, precision, "--data", args.data, "--repeats", str(args.repeats)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        sys.exit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def server(runtime, precision, args, photo, phone, photos):
    proc, port = start_server(
        ROOT, ["--data", args.data, "--no-explore", "--runtime", runtime, "--precision", precision], timeout=600
    )
    try:
        out = http_medians(port, photo, phone, args.repeats)
        out["rss_warm"] = rss_mb(proc.pid)
        out["rps_1"] = requests_per_second(port, photos, 1, 5 * args.repeats)
        out["rps_8"] = requests_per_second(port, photos, 8, 20 * args.repeats)
        out["rss_after"] = rss_mb(proc.pid)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--batch-photos", type=int, default=500)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child, args.data, args.repeats)
    from PIL import Image

    from benchmarks.batch import run_child as batch_child
    from model.data import load_dataset, split

    dataset = load_dataset(args.data)
    test_idx = split(len(dataset.images))[2]
    photo = dataset.path(int(test_idx[0])).read_bytes()
    photos = [dataset.path(int(i)).read_bytes() for i in test_idx[:20]]
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(buf, "JPEG")
    phone = buf.getvalue()
    load = os.getloadavg()[0]
    results = {rt: [] for rt in RUNTIMES}
    gflops = []
    with tempfile.TemporaryDirectory(prefix="miml-runtime-") as tmp:
        folder = Path(tmp)
        for name in sorted(os.listdir(Path(args.data) / "original"))[: args.batch_photos]:
            os.link(Path(args.data) / "original" / name, folder / name)
        batch_args = argparse.Namespace(model=str(ROOT / "model" / "shipped"), bound_batches=4)
        for r in range(args.rounds):
            gflops.append(matmul_gflops())
            for rt in RUNTIMES if r % 2 == 0 else RUNTIMES[::-1]:
                row = run_child(*rt, args)
                row["batch_cli"] = batch_child(folder, batch_args, 32, 2, *rt)
                row |= server(*rt, args, photo, phone, photos)
                print(f"round {r + 1}, {rt}: {row}", file=sys.stderr, flush=True)
                results[rt].append(row)
    report(results, gflops, load, args)


def med(rows, key, sub=None):
    return statistics.median(row[key][sub] if sub else row[key] for row in rows)


def report(results, gflops, load, args):
    base = results[RUNTIMES[0]]
    names = [f"{rt[0]} {rt[1]} ({results[rt][0]['served']})" for rt in RUNTIMES]
    print(f"\nLoad average at the start: {load:.1f} on {os.cpu_count()} cores; {args.rounds} rounds, interleaved.\n")
    print("| Measurement (median over rounds) | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(RUNTIMES))
    rows = [
        ("Start-up to the first answer, warm caches (s)", "startup_s", None),
        ("Forward pass, batch 1 (ms)", "batch1_ms", None),
        ("Forward pass, batch 32 (photos/s)", "batch32_per_s", None),
        ("`POST /api/predict`, MIML photo (ms)", "predict", None),
        ("`POST /api/predict`, 12 MP JPEG (ms)", "predict_12mp", None),
        ("Upload page analysis, all class maps (ms)", "upload_page", None),
        ("1 client (requests/s)", "rps_1", None),
        ("8 concurrent clients (requests/s)", "rps_8", None),
        (f"Batch CLI pipeline, {args.batch_photos} photos (photos/s)", "batch_cli", "throughput"),
        ("Batch CLI peak RSS (MiB)", "batch_cli", "peak_rss_mib"),
        ("Server RSS after warm-up (MB)", "rss_warm", None),
        ("Server RSS after the requests (MB)", "rss_after", None),
        ("In-process RSS after the passes (MB)", "rss_mb", None),
    ]
    for title, key, sub in rows:
        b = med(base, key, sub)
        cells = []
        for rt in RUNTIMES:
            v = med(results[rt], key, sub)
            cells.append(f"{v:.1f}" if rt == RUNTIMES[0] else f"{v:.1f} ({v / b:.2f}x)")
        print(f"| {title} | " + " | ".join(cells) + " |")
    flops, rate = base[0]["flops"], statistics.median(gflops)
    bound_ms = flops / (rate * 1e9) * 1000
    print(
        f"\nCompute bound: {flops / 1e9:.2f} GFLOP a photo / {rate:.0f} GFLOP/s float32 matmul (TensorFlow, median "
        f"over rounds) = {bound_ms:.1f} ms. Fraction reached at batch 1 / batch 32: "
        + "; ".join(
            f"{name}: {bound_ms / med(results[rt], 'batch1_ms'):.0%} / "
            f"{bound_ms / (1000 / med(results[rt], 'batch32_per_s')):.0%}"
            for name, rt in zip(names, RUNTIMES)
        )
    )


if __name__ == "__main__":
    main()
