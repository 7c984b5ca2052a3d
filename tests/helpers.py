"""Helpers the test modules share: paths, small generated datasets, the CLIs and the server as a user starts them,
and dataset ZIPs of our own labels. Fixtures live in conftest.py; test modules import from here, never from each other."""

import contextlib
import csv
import http.client
import io
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"  # the browser tests' screenshots
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

# --- small generated datasets -------------------------------------------------------------------------

TINY_LABELS = ["red", "green", "blue"]
TINY_TRAINING = ["--epochs", "1", "--warmup-epochs", "1", "--input-size", "96"]  # a real run, kept short


def make_tiny_dataset(root, n=36, seed=0):
    """n photos whose labels are the colour channels that are bright in them (3 labels)."""
    rng = np.random.default_rng(seed)
    (root / "original").mkdir(parents=True)
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image"] + TINY_LABELS)
        for i in range(1, n + 1):
            labels = rng.integers(0, 2, 3)
            if not labels.any():
                labels[rng.integers(0, 3)] = 1
            pixels = rng.integers(0, 60, (48, 64, 3)) + labels * 180
            Image.fromarray(pixels.astype(np.uint8)).save(root / "original" / f"{i}.jpg")
            writer.writerow([f"{i}.jpg", *labels])
    return root


# --- the command-line tools and the server, as a user starts them ---------------------------------------


def run(*args):
    """`python -m ARGS` from the repository root: the finished process, output captured."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def call(main, *args):
    """A CLI's `main(args)` in this process, seen as `run` sees the process: a CompletedProcess with its exit
    status, stdout and stderr (`sys.exit("message")` is status 1, the message on stderr). For a test of what a
    tool writes rather than of its process: no interpreter and TensorFlow start-up to pay. Other exceptions rise.
    The streams are text over bytes, as a process's are (model.predict reconfigures its stdout's errors)."""
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="") for _ in range(2))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            code = 1 if isinstance(e.code, str) else e.code or 0
    for f in (out, err):
        f.flush()
    return subprocess.CompletedProcess(args, code, *(f.buffer.getvalue().decode() for f in (out, err)))


def start(*args, env=None):
    """`python visualization.py ARGS`, running, its output piped; `env`: its environment, if not this one's."""
    return subprocess.Popen(
        [sys.executable, "visualization.py", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, host=None, timeout=30):
    """(status, headers, body) of a GET to 127.0.0.1:port, with an optional Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path, headers={"Host": host} if host else {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, r.headers, body


def serve(app):
    """Serve a Flask app on a free loopback port in a thread; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


# --- training jobs -----------------------------------------------------------------------------------


def follow(registry, job, timeout=600):
    """Every distinct status the job goes through, until it ends, as GET /api/jobs/ID answers it (JSON)."""
    seen, started = [], time.time()
    while time.time() - started < timeout:
        status = registry.job(job)
        answer = status.to_json()
        if not seen or answer != seen[-1]:
            seen.append(answer)
        if not status.live:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not end in {timeout} s: {seen[-1]}")


def train_processes(job):
    """Pids of `python -m model.train` processes writing this job's model."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"model.train" in cmdline and any(job.encode() in part for part in cmdline):
            pids.append(int(entry.name))
    return pids


# --- datasets of our own labels, as ZIPs ---------------------------------------------------------------

OWN_LABELS = ["water", "golden", "green"]


def zip_bytes(members):
    """A ZIP (deflated) of {name: bytes}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def relabelled(miml_data, n=120, every=16):
    """{image: (water, golden, green)} for n MIML photos spread over the dataset: labels of our own
    (water = sea, golden = desert or sunset, green = trees)."""
    rows = list(csv.DictReader(open(miml_data / "labels.csv")))[::every][:n]
    return {r["image"]: (int(r["sea"]), int(r["desert"] == "1" or r["sunset"] == "1"), int(r["trees"])) for r in rows}


def labels_csv(labels, names=OWN_LABELS):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["image", *names])
    writer.writerows([image, *flags] for image, flags in labels.items())
    return out.getvalue().encode()


def dataset_zip(miml_data, labels, prefix="mine/", extra=()):
    members = {f"{prefix}labels.csv": labels_csv(labels)}
    members.update({f"{prefix}original/{image}": (miml_data / "original" / image).read_bytes() for image in labels})
    members.update(dict(extra))
    return zip_bytes(members)


# --- photos that are not scenes -------------------------------------------------------------------------

NON_SCENE_KINDS = ("test pattern", "text", "flat colour", "noise")


def make_non_scenes(n_each=10, size=256, seed=0):
    """[(kind, PIL image)]: `n_each` of each NON_SCENE_KINDS, made here: colour bars, checkerboards, gradients
    and rings; words rendered with Pillow's font; one flat colour; uniform, Gaussian and salt-and-pepper noise."""
    from PIL import ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n_each):
        kind = i % 4
        if kind == 0:  # colour bars
            bars = rng.permutation(
                [(192, 192, 192), (192, 192, 0), (0, 192, 192), (0, 192, 0), (192, 0, 192), (192, 0, 0), (0, 0, 192)]
            )
            pixels = np.repeat(bars[(xx * 7).astype(int)][:, :, :], 1, axis=0)
        elif kind == 1:  # checkerboard
            cells = rng.integers(4, 24)
            pixels = (((xx * cells).astype(int) + (yy * cells).astype(int)) % 2)[..., None] * rng.integers(0, 256, 3)
        elif kind == 2:  # gradient
            pixels = np.stack([xx, yy, 1 - xx], axis=-1) * 255
        else:  # rings (a zone plate)
            pixels = (np.sin(rng.integers(20, 80) * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)) * 0.5 + 0.5)[
                ..., None
            ] * np.full(3, 255)
        out.append(("test pattern", Image.fromarray(pixels.astype(np.uint8))))
    words = "invoice total amount due please remit payment within thirty days of receipt quarterly report".split()
    for _ in range(n_each):
        ink, paper = (0, 0, 0), tuple(int(v) for v in rng.integers(200, 256, 3))
        image = Image.new("RGB", (size, size), paper)
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=int(rng.integers(12, 28)))
        for line in range(0, size, font.size + 6):
            draw.text((8, line), " ".join(rng.choice(words, 4)), fill=ink, font=font)
        out.append(("text", image))
    for _ in range(n_each):
        out.append(("flat colour", Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))))
    for i in range(n_each):
        kind = i % 3
        if kind == 0:
            pixels = rng.integers(0, 256, (size, size, 3))
        elif kind == 1:
            pixels = np.clip(rng.normal(128, 40, (size, size, 3)), 0, 255)
        else:
            pixels = np.where(rng.random((size, size, 1)) < 0.5, 0, 255) * np.ones(3)
        out.append(("noise", Image.fromarray(pixels.astype(np.uint8))))
    return out
