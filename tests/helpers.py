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
