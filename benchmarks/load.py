"""Load test of the app under its production server (waitress), on loopback only, bounded in count and time.

    python benchmarks/load.py --data DIR [--requests 2000] [--clients 8] [--time-limit 900]

Starts `python visualization.py --server waitress` on a free local port, checks single-threaded
answers for 20 test photos, then sends the requests from concurrent clients: 80% predictions,
8% gallery pages, 7% Grad-CAM predictions, 5% bad inputs. Every good answer must be 200 and every
prediction must equal the single-threaded one. Reports latency, errors and the server's memory.
"""

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--time-limit", type=float, default=900, help="seconds; the test stops sending after this")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import call, multipart, rss_mb, start_server
    from model.data import load_dataset, split

    dataset = load_dataset(args.data)
    photos = [dataset.path(int(i)).read_bytes() for i in split(len(dataset.images))[2][:20]]
    server, port = start_server(ROOT, ["--data", args.data, "--no-explore"])
    try:
        reference = [
            json.loads(call(port, "POST", "/api/predict", *multipart("p.jpg", b))[1])["results"][0] for b in photos
        ]
        call(port, "GET", "/gallery")
        rss_before = rss_mb(server.pid)

        plan = []  # (kind, method, url, body, headers, expected status, reference index)
        for n in range(args.requests):
            r = n % 100
            if r < 80:
                plan.append(("predict", "POST", "/api/predict", *multipart(f"{n}.jpg", photos[n % 20]), 200, n % 20))
            elif r < 88:
                plan.append(("gallery", "GET", f"/gallery?page={1 + n % 10}", None, None, 200, None))
            elif r < 95:
                plan.append(
                    ("gradcam", "POST", "/api/predict?gradcam=sea", *multipart(f"{n}.jpg", photos[n % 20]), 200, n % 20)
                )
            else:
                plan.append(("bad input", "POST", "/api/predict", *multipart("bad.jpg", b"not an image"), 415, None))
        results, lock, deadline = [], threading.Lock(), time.time() + args.time_limit

        def client():
            while time.time() < deadline:
                with lock:
                    if not plan:
                        return
                    kind, method, url, body, headers, expected, ref = plan.pop()
                t = time.perf_counter()
                try:
                    status, payload = call(port, method, url, body, headers)
                except OSError as e:
                    status, payload = None, str(e).encode()
                ms = (time.perf_counter() - t) * 1000
                same = None
                if ref is not None and status == 200:
                    got = json.loads(payload)["results"][0]
                    same = (
                        got["probabilities"] == reference[ref]["probabilities"]
                        and got["predicted"] == reference[ref]["predicted"]
                    )
                with lock:
                    results.append((kind, status == expected, ms, same))

        started = time.time()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        rss_after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(
        f"{len(results)} requests from {args.clients} clients in {elapsed:.1f} s "
        f"({len(results) / elapsed:.1f} requests/s); server RSS {rss_before:.0f} MB before, {rss_after:.0f} MB after"
    )
    print("\n| Requests | count | wrong status | median ms | p95 ms | predictions equal to single-threaded |")
    print("|---|---:|---:|---:|---:|---|")
    for kind in ("predict", "gradcam", "gallery", "bad input"):
        rows = [r for r in results if r[0] == kind]
        if not rows:
            continue
        ms = sorted(r[2] for r in rows)
        same = [r[3] for r in rows if r[3] is not None]
        print(
            f"| {kind} | {len(rows)} | {sum(not r[1] for r in rows)} | {statistics.median(ms):.0f} | "
            f"{ms[int(0.95 * (len(ms) - 1))]:.0f} | {f'{sum(same)}/{len(same)}' if same else '-'} |"
        )
    failures = sum(not r[1] for r in results) + sum(r[3] is False for r in results)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
