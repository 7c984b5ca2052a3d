""" "I don't know this photo", measured: how often the unfamiliar flag fires on photos that are not scenes (made
here: test patterns, text rendered with Pillow, flat colours, noise) and on the MIML test photos, and what it
costs a request.

    python benchmarks/familiarity.py [--model DIR] [--data DIR] [--n-each 40] [--repeats 2000]

Targets (issue 22): at least 90% of the non-scenes flagged, at most 2% of the MIML test photos; at most 0.5 ms a
request. The cost is the median of `TrainingPhotos.judge` on one embedding, beside the full (n, d) product it
replaces (the same sizes, so the same memory traffic) and the model's forward pass on one photo.
Prints a markdown table for docs/trained-models.md.
"""

import argparse
import io
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import median_ms  # noqa: E402
from tests.helpers import NON_SCENE_KINDS, make_non_scenes  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model directory (default: the shipped one)")
    p.add_argument("--data", help="its dataset (default: $MIML_DATA)")
    p.add_argument("--n-each", type=int, default=40, help="non-scene images of each kind")
    p.add_argument("--repeats", type=int, default=2000)
    args = p.parse_args()
    from model.cli import quiet_tensorflow

    quiet_tensorflow()
    from model.data import CONTRACT_SPLIT_SEED, load_dataset, split
    from model.inference import Classifier

    c = Classifier(args.model)
    photos = c.training_photos
    if photos is None:
        sys.exit(f"error: {c.info.path} has no familiarity.npz (python -m model.familiarity --model DIR)")
    dataset = load_dataset(args.data)
    _, _, test_idx = split(len(dataset.images), c.card.split.seed or CONTRACT_SPLIT_SEED)
    test = c.embeddings(dataset.load_photos(test_idx, c.size))
    made = make_non_scenes(args.n_each)
    odd = c.embeddings(np.stack([c.load(png(image)) for _, image in made]))

    rows = []
    flagged = np.array([f.unfamiliar for f in c.familiarity(odd)])
    kinds = np.array([kind for kind, _ in made])
    for kind in NON_SCENE_KINDS:
        rows.append((f"non-scenes: {kind}", (kinds == kind).sum(), flagged[kinds == kind].mean(), ""))
    rows.append(("non-scenes: all", len(made), flagged.mean(), "≥ 90%"))
    on_test = np.array([f.unfamiliar for f in c.familiarity(test)])
    rows.append(("MIML test photos", len(test), on_test.mean(), "≤ 2%"))

    one = test[:1]
    full = np.random.default_rng(0).random((len(photos.train), photos.basis.shape[0]), np.float32)
    q = one[0] / np.linalg.norm(one[0])
    judge = median_ms(lambda: photos.judge(one), args.repeats, warmup=20)
    product = median_ms(lambda: np.einsum("nd,d->n", full, q).max(), args.repeats, warmup=20)
    pixels = c.load(png(made[0][1]))[None]
    forward = median_ms(lambda: c.forward(pixels), 30, warmup=3)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    print(
        f"model `{c.name}` ({c.card.training.architecture}), commit {commit.strip()}, threshold {photos.threshold:.4f} "
        f"(percentile {photos.percentile:g} of the validation photos' similarity to the nearest of "
        f"{photos.train.shape[0]} training photos), "
        f"{photos.train.shape[1]} principal directions\n"
    )
    print("| set | photos | flagged unfamiliar | target |\n|---|---:|---:|---|")
    for name, n, rate, target in rows:
        print(f"| {name} | {n} | {rate:.1%} | {target} |")
    print("\n| per request (median) | ms |\n|---|---:|")
    print(f"| familiarity (`TrainingPhotos.judge`, one photo) | {judge:.3f} |")
    print(f"| the full product it replaces ({full.shape[0]} x {full.shape[1]} float32) | {product:.3f} |")
    print(f"| the model's forward pass, one photo | {forward:.1f} |")
    print(f"\nfamiliarity / forward: {judge / forward:.1%}")


def png(image):
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


if __name__ == "__main__":
    main()
