"""Batch prediction throughput against the bare forward pass, and its memory, on this machine.

    python benchmarks/batch.py --data DIR [--model DIR] [--batch-sizes 32 64] [--workers 1 2] [--big 20000]

Each measurement runs in a fresh process. It times `model.batch.predict_paths` streaming every photo
of a folder into a CSV file (what `python -m model.predict FOLDER --csv FILE` does after loading the
model), and the forward-pass bound of the same model at the same batch size: `Classifier.probabilities`
on preloaded uint8 batches, timed just before and just after, averaged (another process may share the
CPU). Peak RSS is VmHWM, reset once the model is loaded, so it is the pipeline's own high-water mark.
The grid runs on DIR/original; the default settings then also run on a folder of `--big` hard links to
those photos (in nested folders, removed afterwards), to show that memory does not grow with the count.
Prints a markdown table.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def status_mib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024


def measure(folder, model_dir, batch_size, workers, bound_batches, runtime="auto", precision="auto"):
    """One configuration, in this process: a dict of the numbers."""
    import numpy as np
    from model.batch import expand, predict_paths
    from model.inference import Classifier
    from model.predict import CsvRows

    clf = Classifier(model_dir, runtime=runtime, precision=precision)
    paths = [p for _, p in zip(range(4 * batch_size), expand([folder]))]
    start = time.perf_counter()
    preloaded = np.stack([clf.load(p) for p in paths])
    decode_ms = (time.perf_counter() - start) / len(paths) * 1000
    batches = [preloaded[i : i + batch_size] for i in range(0, len(preloaded), batch_size)]
    clf.probabilities(batches[0], batch_size), clf.probabilities(batches[0][:1], batch_size)  # trace both shapes

    def bound():
        start = time.perf_counter()
        for i in range(bound_batches):
            clf.probabilities(batches[i % len(batches)], batch_size)
        return bound_batches * batch_size / (time.perf_counter() - start)

    before = bound()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    rss_before = status_mib("VmRSS")
    with tempfile.TemporaryFile("w") as out:
        writer, n, errors = CsvRows(out, clf.labels), 0, 0
        start = time.perf_counter()
        for result in predict_paths(clf, expand([folder]), batch_size, workers):
            writer.write(result)
            n, errors = n + 1, errors + ("error" in result)
        seconds = time.perf_counter() - start
    peak = status_mib("VmHWM")
    after = bound()
    return {
        "photos": n,
        "errors": errors,
        "seconds": seconds,
        "throughput": n / seconds,
        "bound": (before + after) / 2,
        "bound_before": before,
        "bound_after": after,
        "decode_ms": decode_ms,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak,
    }


def run_child(folder, args, batch_size, workers, runtime="auto", precision="auto"):
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        str(folder),
        "--model",
        args.model,
        "--batch-size",
        str(batch_size),
        "--workers",
        str(workers),
        "--bound-batches",
        str(args.bound_batches),
        "--runtime",
        runtime,
        "--precision",
        precision,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        sys.exit(r.stderr)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"  {folder}: batch {batch_size}, {workers} workers, {runtime} {precision}: {result}", file=sys.stderr)
    return result


def linked_folder(source, count, into):
    """`count` hard links (copies across file systems) to the photos of `source`, 2000 a subfolder."""
    photos = sorted(p for p in source.iterdir() if p.is_file())
    for i in range(count):
        target = into / f"part{i // 2000:03d}" / f"{i:06d}{photos[i % len(photos)].suffix}"
        target.parent.mkdir(exist_ok=True)
        try:
            os.link(photos[i % len(photos)], target)
        except OSError:
            shutil.copyfile(photos[i % len(photos)], target)
    return into


def main():
    from model.batch import WORKERS
    from model.modeldir import SHIPPED_MODEL_DIR

    p = argparse.ArgumentParser()
    p.add_argument("--data", help="the MIML dataset (its original/ folder is measured)")
    p.add_argument("--model", default=str(SHIPPED_MODEL_DIR))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--big", type=int, default=20000, help="photos in the generated folder (0: skip)")
    p.add_argument("--bound-batches", type=int, default=15, help="forward passes timed for the bound, each side")
    p.add_argument("--runtime", default="auto", help="as model.predict's --runtime (default auto)")
    p.add_argument("--precision", default="auto", help="as model.predict's --precision (default auto)")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(
            json.dumps(
                measure(
                    args.measure,
                    args.model,
                    args.batch_size,
                    args.workers[0],
                    args.bound_batches,
                    args.runtime,
                    args.precision,
                )
            )
        )
        return
    if not args.data:
        p.error("--data is required")

    original = Path(args.data) / "original"
    load = os.getloadavg()[0]
    rows = [
        (original, b, w, run_child(original, args, b, w, args.runtime, args.precision))
        for b in args.batch_sizes
        for w in args.workers
    ]
    if args.big:
        if (32, WORKERS) not in [(b, w) for _, b, w, _ in rows]:
            rows.append((original, 32, WORKERS, run_child(original, args, 32, WORKERS, args.runtime, args.precision)))
        with tempfile.TemporaryDirectory(prefix="miml-big-") as tmp:
            big = linked_folder(original, args.big, Path(tmp))
            rows.append(
                (
                    f"{args.big} links to them",
                    32,
                    WORKERS,
                    run_child(big, args, 32, WORKERS, args.runtime, args.precision),
                )
            )

    print(f"\nLoad average when started: {load:.2f} on {os.cpu_count()} cores.\n")
    print(
        "| Photos | Batch | Decode threads | Batch predict (photos/s) | Forward-pass bound (photos/s) | Ratio "
        "| Decode, 1 thread (ms/photo) | RSS before (MiB) | Peak RSS (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for folder, b, w, r in rows:
        name = f"{r['photos']} MIML" if folder == original else folder
        print(
            f"| {name} | {b} | {w} | {r['throughput']:.1f} | {r['bound']:.1f} ({r['bound_before']:.1f} / "
            f"{r['bound_after']:.1f}) | {r['throughput'] / r['bound']:.0%} | {r['decode_ms']:.2f} "
            f"| {r['rss_before_mib']:.0f} | {r['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
