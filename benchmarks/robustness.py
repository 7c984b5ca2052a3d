"""Robustness: the 400 contract test photos transformed the way real uploads differ, as a stand-in for
photos the model has never seen.

    python benchmarks/robustness.py --data DIR [--model DIR ...] [--tta none flip]

Each transform is applied to every test photo, which then goes through the same path as an upload
(encoded bytes -> Classifier). For every model (and TTA mode) and transform it reports the decision
agreement with the clean photo (share of the 400 x 5 label decisions that stay the same; and of photos
whose whole label set stays the same), the Hamming loss against the true labels and, on the photos with one
true label (a stand-in for the private set of modern photos with one clear main label each), the share whose
label is predicted (and the worst label's share) and the mean number of labels predicted. Prints a markdown table.
"""

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def jpeg(im, quality=90, exif=None):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def phone_12mp(im):
    """Upscaled to about 12 megapixels, as a phone takes it, and recompressed."""
    scale = (12e6 / (im.width * im.height)) ** 0.5
    return jpeg(im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC), 92)


def centre_crop(im, keep=0.8):
    w, h = round(im.width * keep), round(im.height * keep)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return jpeg(im.crop((left, top, left + w, top + h)))


def exif_rotated(im):
    """Stored sideways with an EXIF tag that says how to turn it upright (as phones do)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    return jpeg(im.transpose(Image.Transpose.ROTATE_90), exif=exif)


def white_balance(im):
    """A warm cast: red up 10%, blue down 10%."""
    a = np.asarray(im, np.float32) * np.array([1.1, 1.0, 0.9], np.float32)
    return jpeg(Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8)))


def panorama(im):
    """A phone panorama's shape: the middle strip of the photo, 3 times as wide as it is tall."""
    h = min(im.height, round(im.width / 3))
    top = (im.height - h) // 2
    return jpeg(im.crop((0, top, im.width, top + h)))


TRANSFORMS = {
    "clean (the original file)": None,
    "12 MP upscale, recompressed": phone_12mp,
    "JPEG quality 40": lambda im: jpeg(im, 40),
    "80% centre crop": centre_crop,
    "rotated, EXIF orientation tag": exif_rotated,
    "white-balance shift (warm)": white_balance,
    "slight blur (Gaussian, radius 1)": lambda im: jpeg(im.filter(ImageFilter.GaussianBlur(1))),
    "panorama crop (3:1 strip)": panorama,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--model", nargs="*", default=[None], help="model directories (default: the shipped one)")
    p.add_argument("--tta", nargs="*", default=[None], help="TTA modes to compare (default: each model's own)")
    args = p.parse_args()
    from model.cli import quiet_tensorflow

    quiet_tensorflow()
    from model.data import load_dataset, split
    from model.inference import Classifier

    dataset = load_dataset(args.data)
    test_idx = split(len(dataset.images))[2]
    truth = dataset.labels[test_idx]
    raw = [dataset.path(i).read_bytes() for i in test_idx]
    originals = [Image.open(io.BytesIO(data)).convert("RGB") for data in raw]
    classifiers = [Classifier(m, tta=t) for m in args.model for t in args.tta]
    decisions = {}  # (classifier index, transform) -> (400, labels) 0/1
    for name, transform in TRANSFORMS.items():
        encoded = raw if transform is None else [transform(im) for im in originals]
        for k, c in enumerate(classifiers):
            pixels = np.stack([c.load(data) for data in encoded])
            decisions[k, name] = c.decide(c.probabilities(pixels))
        print(f"{name}: done", file=sys.stderr, flush=True)

    single = truth.sum(axis=1) == 1  # like the private set: one clear main label a photo
    main_label = truth[single].argmax(axis=1)
    print(
        "| Model | TTA | Transform | label decisions as on the clean photo | label sets as on the clean photo "
        "| Hamming loss | one-label photos: label found (worst label) | labels a photo |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    clean = next(iter(TRANSFORMS))
    for k, c in enumerate(classifiers):
        for name in TRANSFORMS:
            d, ref = decisions[k, name], decisions[k, clean]
            found = d[single][np.arange(single.sum()), main_label] == 1
            worst = min(found[main_label == j].mean() for j in np.unique(main_label))
            print(
                f"| {c.name} | {c.tta} | {name} | {np.mean(d == ref):.2%} | {np.mean((d == ref).all(axis=1)):.1%} "
                f"| {np.mean(d != truth):.4f} | {found.mean():.1%} ({worst:.1%}) | {d[single].sum(axis=1).mean():.2f} |"
            )


if __name__ == "__main__":
    main()
