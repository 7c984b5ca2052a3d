"""Predict the labels of photos.

    python -m model.predict PATH [PATH ...] [--model DIR] [--json]

Folders are searched recursively for images. A file that cannot be read gets an
error entry; the others are still predicted, and the exit code is 1.
"""
import argparse
import json
import sys
from pathlib import Path

from model.modeldir import ModelDirError, SHIPPED_MODEL_DIR
from model.preprocess import ImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
BATCH = 32


def expand(paths):
    """Files as given; folders walked recursively for image files, in sorted order."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            yield path


def predict_paths(classifier, paths):
    """Yield one result dict per path: {'path', 'probabilities', 'predicted'} or {'path', 'error'}."""
    pending, images = [], []

    def flush():
        for path, result in zip(pending, classifier.classify(images) if images else []):
            yield {"path": str(path), **result}
        pending.clear(), images.clear()

    for path in paths:
        try:
            images.append(classifier.load(path))
            pending.append(path)
        except (ImageError, OSError) as e:
            yield {"path": str(path), "error": getattr(e, "strerror", None) or str(e)}
        if len(images) == BATCH:
            yield from flush()
    yield from flush()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.predict", description="Predict scene labels for photos.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="photo files or folders")
    p.add_argument("--model", default=str(SHIPPED_MODEL_DIR), help="model directory (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of lines")
    args = p.parse_args(argv)
    try:
        from model.inference import Classifier
        classifier = Classifier(args.model)
    except ModelDirError as e:
        sys.exit(f"error: {e}")
    results, failed = [], 0
    for result in predict_paths(classifier, expand(args.paths)):
        failed += "error" in result
        if args.json:
            results.append(result)
        elif "error" in result:
            print(f"{result['path']}: error: {result['error']}", file=sys.stderr)
        else:
            probs = " ".join(f"{l} {p:.2f}" for l, p in result["probabilities"].items())
            print(f"{result['path']}: {', '.join(result['predicted']) or '(no label)'}  ({probs})", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
