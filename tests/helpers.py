"""Small generated datasets for tests that must not depend on the real photos."""

import csv

import numpy as np
from PIL import Image

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
