"""Exploring the model, timed: the dataset's embeddings in the background, a second start with the cache,
/api/predict with and without ?similar=10 (over HTTP and in process), /api/map, and drawing the map in Chromium.

    python benchmarks/explore.py --data DIR [--repeats 40]

Starts `python visualization.py --data DIR` (waitress) twice with an empty atlas cache (a temporary
$MIML_CACHE; the LiteRT flatbuffer is linked from the usual cache, so its conversion is not timed).
Prints a markdown table for docs/benchmarks.md.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import call, median_ms, multipart, start_server  # noqa: E402


def wait_for_map(port, poll=0.25):
    """Poll /api/map until it answers 200: (seconds waited, seconds until the progress reached 90%)."""
    started = time.perf_counter()
    embedded = None
    while True:
        status, body = call(port, "GET", "/api/map")
        now = time.perf_counter() - started
        if status == 200:
            return now, embedded if embedded is not None else now
        if embedded is None and json.loads(body)["progress"] >= 0.9:  # the embeddings are done, the layout runs
            embedded = now
        time.sleep(poll)


def draw_ms(port, repeats):
    """Median time of map.js's draw() for all points in Chromium (canvas data-draw-ms), over colour toggles."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        started = time.perf_counter()
        page.goto(f"http://127.0.0.1:{port}/map")
        page.locator("canvas[data-ready]").wait_for(timeout=60000)
        load_ms = (time.perf_counter() - started) * 1000
        times = [float(page.locator("canvas").get_attribute("data-draw-ms"))]
        for i in range(repeats):
            page.check(f"input[value={'predicted' if i % 2 == 0 else 'truth'}]")
            times.append(float(page.locator("canvas").get_attribute("data-draw-ms")))
        browser.close()
    return statistics.median(times), load_ms


def in_process(data, folder, photo, repeats):
    """The same two requests through Flask's test client (no sockets, no server threads), interleaved,
    and the search alone, on the atlas the server cached in `folder`."""
    import io

    from app import create_app
    from app.scenes import Scenes

    scenes = Scenes(data_dir=data)
    scenes.atlas = scenes.classifier.atlas(scenes.dataset, folder).start()
    assert scenes.atlas.from_cache
    client = create_app(scenes=scenes).test_client()

    def post(url):
        return lambda: client.post(
            url, data={"image": (io.BytesIO(photo), "a.jpg")}, content_type="multipart/form-data"
        )

    plain, similar = [], []
    for _ in range(repeats):
        plain.append(median_ms(post("/api/predict"), 1, 0))
        similar.append(median_ms(post("/api/predict?similar=10"), 1, 0))
    query = scenes.atlas.unit[0]
    return [
        (f"In process (Flask test client, median of {repeats}): `/api/predict`", statistics.median(plain)),
        (f"In process (Flask test client, median of {repeats}): `/api/predict?similar=10`", statistics.median(similar)),
        (
            f"The search alone: top 10 of {len(scenes.atlas.unit)} by cosine (median of 200)",
            median_ms(lambda: scenes.atlas.similar(query, 10), 200),
        ),
    ]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args()
    import os

    from model.cli import quiet_tensorflow

    quiet_tensorflow(False)
    from model.cache import cache_dir
    from model.data import load_dataset

    photo = load_dataset(args.data).path(0).read_bytes()
    body, headers = multipart("photo.jpg", photo)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        (Path(cache) / "litert").symlink_to(cache_dir() / "litert")
        os.environ["MIML_CACHE"] = cache
        started = time.perf_counter()
        proc, port = start_server(ROOT, ["--data", args.data])
        rows.append(
            (
                "Start-up until `/api/health` answers (first start, atlas computing behind it)",
                (time.perf_counter() - started) * 1000,
            )
        )
        try:
            during = median_ms(lambda: call(port, "POST", "/api/predict", body, headers, expect=200), 20)
            total, embedded = wait_for_map(port)
            rows.append(("`/api/predict` while the atlas is computed (median of 20)", during))
            rows.append(("Background: embeddings of all photos (until progress 90%)", embedded * 1000))
            rows.append(("Background: embeddings + PCA + t-SNE layout, until `/api/map` answers", total * 1000))
        finally:
            proc.terminate()
            proc.wait()
        started = time.perf_counter()
        proc, port = start_server(ROOT, ["--data", args.data])
        try:
            status, _ = call(port, "GET", "/api/map")
            rows.append(
                (
                    f"Second start with the cache: until `/api/health` answers (then `/api/map`: {status})",
                    (time.perf_counter() - started) * 1000,
                )
            )
            plain, similar = [], []
            for _ in range(3):  # warm-up
                call(port, "POST", "/api/predict?similar=10", body, headers, expect=200)
            for _ in range(args.repeats):  # interleaved, so both see the same machine
                plain.append(median_ms(lambda: call(port, "POST", "/api/predict", body, headers, expect=200), 1, 0))
                similar.append(
                    median_ms(lambda: call(port, "POST", "/api/predict?similar=10", body, headers, expect=200), 1, 0)
                )
            rows.append((f"`POST /api/predict` (median of {args.repeats})", statistics.median(plain)))
            rows.append((f"`POST /api/predict?similar=10` (median of {args.repeats})", statistics.median(similar)))
            size = len(call(port, "GET", "/api/map")[1])
            rows.append(
                (
                    f"`GET /api/map`, all points ({size // 1024} KB, median of 20)",
                    median_ms(lambda: call(port, "GET", "/api/map", expect=200), 20),
                )
            )
            drawn, loaded = draw_ms(port, 20)
            rows.append(("Drawing the map in Chromium: `draw()` for all points (median of 21)", drawn))
            rows.append(("`/map` in Chromium: navigation until the map is drawn", loaded))
        finally:
            proc.terminate()
            proc.wait()
        rows += in_process(args.data, Path(cache) / "atlas", photo, 2 * args.repeats)
    print("| Measurement | ms |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |" if ms >= 10 else f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
