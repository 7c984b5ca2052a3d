"""Serving speed on this machine: medians over repeated calls, all measured in one run.

    python benchmarks/serving.py --data DIR [--repeats 50]

Compares our serving path (LiteRT, letterboxed 224x224 EfficientNet-Lite0) with the
original project's (its 100x100 CNN called through model.predict per request), and times the app's
HTTP endpoints served by waitress on loopback. Prints a markdown table for docs/benchmarks.md.
"""

import argparse
import http.client
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import median_ms, multipart, start_server  # noqa: E402


def startup_ms(data):
    """Wall time from launching the app to its first health answer."""
    import time

    started = time.perf_counter()
    proc, _ = start_server(Path(__file__).resolve().parent.parent, ["--data", data, "--no-explore"])
    ms = (time.perf_counter() - started) * 1000
    proc.terminate()
    proc.wait()
    return ms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    from waitress import create_server

    from app import create_app
    from app.render import heatmap_overlay
    from model.data import load_dataset, split
    from model.network import build_seed_cnn
    from model.preprocess import load_image

    app = create_app(data_dir=args.data)
    scenes = app.extensions["scenes"]
    clf = scenes.classifier
    dataset = load_dataset(args.data)
    photo = dataset.path(int(split(len(dataset.images))[2][0])).read_bytes()  # a typical test photo
    pixels = clf.load(photo)
    rows = []

    rows.append(
        (
            "Forward pass, one preprocessed photo (LiteRT)",
            median_ms(lambda: clf.probabilities(pixels[None]), args.repeats),
        )
    )
    ours = median_ms(lambda: clf.classify(clf.load(photo)[None]), args.repeats)
    rows.append(("In-process prediction of one photo: JPEG bytes to labels", ours))
    seed = build_seed_cnn(clf.labels)
    seed_pixels = load_image(photo, 100)[None].astype("float32")
    original = median_ms(lambda: seed.predict(load_image(photo, 100)[None].astype("float32"), verbose=0), args.repeats)
    rows.append(("Original project's path: 100x100 CNN, `model.predict` per photo", original))
    rows.append(
        (
            "Original CNN through `predict_on_batch` (for reference)",
            median_ms(lambda: seed.predict_on_batch(seed_pixels), args.repeats),
        )
    )
    rows.append(
        (
            "Class maps for all labels from a forward pass, no rendering",
            median_ms(lambda: clf.class_maps(pixels), args.repeats),
        )
    )
    rows.append(
        (
            "Class map for one label, rendered as PNG overlay",
            median_ms(lambda: heatmap_overlay(clf.class_maps(pixels)[0]), args.repeats),
        )
    )
    rows.append(
        (
            "Class maps for all labels, rendered as PNG overlays",
            median_ms(lambda: [heatmap_overlay(c) for c in clf.class_maps(pixels)], args.repeats),
        )
    )

    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    port = server.effective_port
    threading.Thread(target=server.run, daemon=True).start()
    body, headers = multipart("photo.jpg", photo)

    def request(method, url, payload=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request(method, url, body=payload, headers=headers or {})
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200, (url, response.status)

    rows.append(
        (
            "HTTP `POST /api/predict`, one photo, end to end",
            median_ms(lambda: request("POST", "/api/predict", body, headers), args.repeats),
        )
    )
    rows.append(
        (
            "HTTP `POST /api/predict?gradcam=sea`, one photo",
            median_ms(lambda: request("POST", "/api/predict?gradcam=sea", body, headers), args.repeats),
        )
    )
    rows.append(
        (
            "HTTP `POST /` upload page, one photo with all 5 Grad-CAMs",
            median_ms(lambda: request("POST", "/", body, {**headers, "X-Requested-With": "fetch"}), args.repeats),
        )
    )
    rows.append(("HTTP `GET /gallery` (first page)", median_ms(lambda: request("GET", "/gallery"), args.repeats)))
    rows.append(
        (
            "HTTP `GET /gallery?label=sea&show=fp&sort=error`",
            median_ms(lambda: request("GET", "/gallery?label=sea&show=fp&sort=error"), args.repeats),
        )
    )
    server.close()

    rows.append(("Start-up: `python visualization.py` until `/api/health` answers", startup_ms(args.data)))

    print(f"| Measurement (median of {args.repeats}; start-up: one run) | ms |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")
    print(f"\nOriginal serving path / ours: {original / ours:.1f}x slower")


if __name__ == "__main__":
    main()
