"""Predict latency while hostile dataset imports run (issue 21, item 4), all measured in one run.

    python benchmarks/hardening.py [--root DIR] [--attackers 8] [--repeats 30]

Starts the app (waitress, `--runs` in a temporary folder, no dataset) from the checkout `--root` (default:
this one), times POST /api/predict of one photo while idle, then again while `--attackers` clients upload,
over and over, the issue's ZIP: twenty blank 40-megapixel RGBA PNGs (14 kB, 54 s of decoding). One import
runs at a time at nice 19, so the others get a 409 and try again 100 ms later. Prints a markdown table:
medians, 90th percentiles, the ratio to idle, the imports answered, and the server's peak RSS.
"""

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import call, multipart, start_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def hostile_zip():
    """labels.csv and twenty blank 6324 x 6324 RGBA PNGs (each 40 megapixels, a few kB compressed)."""
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGBA", (6324, 6324)).save(png, "PNG")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labels.csv", "image,a,b\n" + "".join(f"{i}.png,{i % 2},1\n" for i in range(20)))
        for i in range(20):
            zf.writestr(f"original/{i}.png", png.getvalue())
    return buf.getvalue()


def photo():
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((640, 480), 60).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def latencies(port, body, headers, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        call(port, "POST", "/api/predict", body, headers, expect=200)
        out.append((time.perf_counter() - t) * 1000)
    return out


def attack(port, body, headers, stop, answers):
    while not stop.is_set():
        status, _ = call(port, "POST", "/api/datasets", body, headers)
        answers.append(status)
        if status == 409:
            time.sleep(0.1)


def peak_rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


def row(name, ms, idle):
    p90 = statistics.quantiles(ms, n=10)[-1]
    return f"| {name} | {statistics.median(ms):.0f} | {p90:.0f} | {statistics.median(ms) / idle:.2f}x |"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", default=str(ROOT), help="the checkout to serve (default: this one)")
    p.add_argument("--attackers", type=int, default=8)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.root, capture_output=True, text=True)
    predict = multipart("photo.jpg", photo())
    zipped = multipart("hostile.zip", hostile_zip(), field="file")
    with tempfile.TemporaryDirectory() as runs:
        proc, port = start_server(args.root, ["--runs", runs, "--no-explore"])
        try:
            latencies(port, *predict, 3)  # warm-up
            idle = latencies(port, *predict, args.repeats)
            stop, answers = threading.Event(), []
            threads = [
                threading.Thread(target=attack, args=(port, *zipped, stop, answers), daemon=True)
                for _ in range(args.attackers)
            ]
            for t in threads:
                t.start()
            time.sleep(2)  # the first import is decoding
            loaded = latencies(port, *predict, args.repeats)
            t = time.perf_counter()
            call(port, "GET", "/api/health", expect=200)
            health_ms = (time.perf_counter() - t) * 1000
            stop.set()
            for t in threads:
                t.join(120)
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait()
    base = statistics.median(idle)
    print(
        f"Shipped model (LiteRT), commit {commit.stdout.strip()}, {args.attackers} hostile importers, one photo a request"
    )
    print()
    print("| predict | median ms | p90 ms | vs idle |")
    print("|---|---|---|---|")
    print(row("idle", idle, base))
    print(row(f"under {args.attackers} hostile imports", loaded, base))
    print()
    counts = {s: answers.count(s) for s in sorted(set(answers))}
    print(f"/api/health under load: {health_ms:.0f} ms; import answers: {counts}; server peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
