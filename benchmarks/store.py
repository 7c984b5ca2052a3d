"""What the shared store (workspace.registry on RUNS/workspace.sqlite) costs the app, measured side by side in one run:

- the version check every request makes (`Registry.version`: one read on the thread's open connection, and the
  app's `follow_the_store` around it), in µs;
- POST /api/predict (one photo, the shipped model) with the check and without it, requests interleaved, medians;
- job status reads per second: `Registry.job` directly, and GET /api/jobs/ID over HTTP (1 and 4 clients).

    python benchmarks/store.py [--data DIR] [--requests 200] [--seconds 3]

The app runs under waitress in this process (8 threads) on a fresh runs folder; "without" takes the check out of
the app's before_request functions for that request; the two alternate in pairs, each pair in a random order. Prints a markdown table for docs/deploy.md.
"""

import argparse
import http.client
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import multipart  # noqa: E402


def per_call_us(fn, calls=20_000, rounds=5):
    """Median over `rounds` of the mean time of one call of `fn` in µs."""
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        results.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(results)


def per_second(fn, seconds, clients=1):
    """Calls of `fn(connection)` per second from `clients` threads, each with its own keep-alive connection."""
    done, stop = [0] * clients, time.perf_counter() + seconds

    def client(i, port):
        con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < stop:
            fn(con)
            done[i] += 1
        con.close()

    threads = [threading.Thread(target=client, args=(i, fn.port)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - started)


def request(con, method, url, body=None, headers=None):
    con.request(method, url, body=body, headers=headers or {})
    response = con.getresponse()
    response.read()
    assert response.status == 200, response.status
    return response.status


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("MIML_DATA"), help="the dataset, for a photo (default $MIML_DATA)")
    p.add_argument("--requests", type=int, default=200, help="predict requests per arm")
    p.add_argument("--seconds", type=float, default=3, help="how long each reads-per-second run lasts")
    args = p.parse_args()
    if not args.data:
        sys.exit("error: give --data or set MIML_DATA (a photo to predict on)")
    from model.cli import quiet_tensorflow

    quiet_tensorflow()
    from waitress import create_server

    from app import create_app
    from app.training import follow_the_store

    runs = Path(tempfile.mkdtemp(prefix="store-bench-"))
    app = create_app(runs_dir=runs)
    registry = app.extensions["registry"]
    with registry.db.write() as con:  # a finished job to read
        con.execute(
            "INSERT INTO jobs (id, dataset, mode, state, progress, message, created, owner, heartbeat, curve) "
            "VALUES ('quick-bench', 'd', 'quick', 'done', 1.0, 'done', '2026-01-01', 'bench:1', 0, '[]')"
        )
    server = create_server(app, host="127.0.0.1", port=0, threads=8)
    threading.Thread(target=server.run, daemon=True).start()
    port = server.effective_port

    version_us = per_call_us(registry.version)
    with app.test_request_context("/api/predict", method="POST"):
        follow_the_store()  # the first call reads the store's state
        follow_us = per_call_us(follow_the_store)  # what each request pays while nothing changed
    job_direct = per_call_us(lambda: registry.job("quick-bench"), calls=2_000)

    photo = (Path(args.data) / "original" / "1.jpg").read_bytes()
    body, headers = multipart("1.jpg", photo)
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    funcs = app.before_request_funcs[None]
    times = {"with": [], "without": []}
    rng = random.Random(0)  # each pair in a random order: no bias from what ran just before (the pool's workers)
    arms = [arm for _ in range(args.requests + 5) for arm in rng.sample(["with", "without"], 2)]
    for i, arm in enumerate(arms):
        if arm == "without":
            funcs.remove(follow_the_store)
        started = time.perf_counter()
        request(con, "POST", "/api/predict", body, headers)
        elapsed = (time.perf_counter() - started) * 1000
        if arm == "without":
            funcs.append(follow_the_store)
        if i >= 10:  # warm-up
            times[arm].append(elapsed)
    con.close()
    predict = {arm: statistics.median(t) for arm, t in times.items()}
    paired = statistics.median(w - wo for w, wo in zip(times["with"], times["without"]))

    def status(con):
        return request(con, "GET", "/api/jobs/quick-bench")

    status.port = port
    http_1, http_4 = per_second(status, args.seconds), per_second(status, args.seconds, clients=4)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    runtime = app.extensions["scenes"].classifier.runtime
    print(f"commit {commit.strip()}, the shipped model ({runtime}), {os.cpu_count()} cores\n")
    print("| what | median |")
    print("|---|---|")
    print(f"| version check (`Registry.version`), per call | {version_us:.1f} µs |")
    print(f"| the app's check before each request (`follow_the_store`), per call | {follow_us:.1f} µs |")
    print(f"| POST /api/predict, one photo, without the check | {predict['without']:.2f} ms |")
    print(
        f"| POST /api/predict, one photo, with the check | {predict['with']:.2f} ms "
        f"(ratio {predict['with'] / predict['without']:.3f}; median of the paired differences {paired:+.3f} ms) |"
    )
    print(f"| job status, `Registry.job` directly | {1e6 / job_direct:,.0f} reads/s ({job_direct:.0f} µs each) |")
    print(f"| job status, GET /api/jobs/ID, 1 client | {http_1:,.0f} reads/s |")
    print(f"| job status, GET /api/jobs/ID, 4 clients | {http_4:,.0f} reads/s |")


if __name__ == "__main__":
    main()
