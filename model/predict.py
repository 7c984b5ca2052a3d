"""Predict the labels of photos.

    python -m model.predict PATH [PATH ...] [--model DIR] [--json] [--csv FILE] [--json-file FILE] [--batch-size 32] [--tta none|flip]
        [--runtime auto|openvino|litert|keras] [--precision auto|f32|bf16|int8]
    python -m model.predict SOURCE [SOURCE ...] --engine ray [--address ADDRESS] [--actors N] --csv FILE | --parquet DIR

Folders are searched recursively for images. A file that cannot be read (not an image,
a symlink loop, a FIFO or other non-regular file) gets an error entry; the others are
still predicted, and the exit code is 1. No photo at all is one error line and exit
code 2. Results are
written as they come (see model/batch.py), so any number of photos runs in flat memory.
Without an output file, one line a photo (or --json, a JSON list) goes to stdout; with
--csv or --json-file, stderr shows progress and a summary.
`--engine ray` runs the same pipeline on Ray Data (model/ray_batch.py): locally or on a cluster,
the same CSV rows; SOURCE may also be a glob, a text file of paths, or a URI pyarrow reads.
"""

import argparse
import csv
import json
import sys

from tqdm import tqdm

from model.batch import IMAGE_SUFFIXES, expand, predict_paths
from model.cli import add_runtime_flags, add_verbose_flag, exit_with, quiet_tensorflow
from model.modeldir import ModelDirError, SHIPPED_MODEL_DIR, read_model_dir


class JsonList:
    """Writes a JSON list one item at a time, byte for byte what json.dumps(items, indent=2) would."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, item):
        self.f.write(
            ("[\n" if not self.n else ",\n") + "\n".join("  " + l for l in json.dumps(item, indent=2).splitlines())
        )
        self.n += 1

    def close(self):
        self.f.write("\n]\n" if self.n else "[]\n")


class CsvRows:
    """path, one probability column a label, predicted (labels separated by spaces), familiarity (cosine
    similarity to the nearest training photo), unfamiliar (1 when below the model's threshold), error."""

    def __init__(self, f, labels):
        self.writer, self.labels = csv.writer(f), labels
        self.writer.writerow(["path", *labels, "predicted", "familiarity", "unfamiliar", "error"])

    def write(self, r):
        if "error" in r:
            self.writer.writerow([r["path"], *[""] * len(self.labels), "", "", "", r["error"]])
        else:
            known = r.get("familiarity")
            self.writer.writerow(
                [
                    r["path"],
                    *(r["probabilities"][l] for l in self.labels),
                    " ".join(r["predicted"]),
                    "" if known is None else known["score"],
                    "" if known is None else int(known["unfamiliar"]),
                    "",
                ]
            )

    def close(self):
        pass


class Lines:
    """One line a photo: its labels and probabilities on stdout, or its error on stderr."""

    def write(self, r):
        if "error" in r:
            print(f"{r['path']}: error: {r['error']}", file=sys.stderr)
        else:
            probs = " ".join(f"{l} {p:.2f}" for l, p in r["probabilities"].items())
            odd = (
                "  [unlike anything the model was trained on]" if (r.get("familiarity") or {}).get("unfamiliar") else ""
            )
            print(f"{r['path']}: {', '.join(r['predicted']) or '(no label)'}  ({probs}){odd}", flush=True)

    def close(self):
        pass


def predict_locally(paths, classifier, writers, to_files, batch_size=32):
    """The in-process engine (model/batch.py) over the photo files and folders `paths`: (predicted, failed)."""
    # On a terminal, with an output file: a progress bar, after counting the photos (a second, cheap walk).
    bar = to_files and sys.stderr.isatty()
    progress = tqdm(
        total=sum(1 for _ in expand(paths)) if bar else None, disable=not bar, unit="photo", file=sys.stderr
    )
    failed = predicted = 0
    for result in predict_paths(classifier, expand(paths), batch_size):
        failed += "error" in result
        predicted += "error" not in result
        for writer in writers:
            writer.write(result)
        progress.update()
    progress.close()
    return predicted, failed


def no_photos_found(paths):
    print(
        f"error: no photos found in {', '.join(paths)} (image files end in {', '.join(sorted(IMAGE_SUFFIXES))})",
        file=sys.stderr,
    )
    sys.exit(2)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.predict", description="Predict scene labels for photos.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="photo files or folders (searched recursively)")
    p.add_argument("--model", default=str(SHIPPED_MODEL_DIR), help="model directory (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of lines")
    p.add_argument("--csv", metavar="FILE", help="write path, probabilities, predicted labels and error to a CSV file")
    p.add_argument("--json-file", metavar="FILE", help="write the JSON list to a file")
    p.add_argument("--batch-size", type=int, default=32, help="photos a forward pass (default 32)")
    p.add_argument(
        "--tta",
        choices=["none", "flip"],
        help="test-time augmentation (default: the model's own; the shipped model's is none). flip: the photo "
        "and its mirror image, at twice the cost, with the thresholds tuned on validation for it (thresholds.json)",
    )
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (default); ray: Ray Data, on a local Ray or the cluster at --address",
    )
    p.add_argument(
        "--address", help="with --engine ray: the Ray cluster to use (default: $RAY_ADDRESS, else a local Ray)"
    )
    p.add_argument("--actors", type=int, default=1, help="with --engine ray: model copies, one a Ray actor (default 1)")
    p.add_argument("--parquet", metavar="DIR", help="with --engine ray: write the rows as Parquet files into DIR")
    add_runtime_flags(p)
    add_verbose_flag(p)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.actors < 1:
        p.error("--batch-size and --actors must be at least 1")
    if args.engine == "ray" and (bool(args.csv) == bool(args.parquet) or args.json or args.json_file):
        p.error("--engine ray writes one of --csv FILE or --parquet DIR")
    if args.engine != "ray" and (args.parquet or args.address):
        p.error("--parquet and --address go with --engine ray")
    try:
        labels = list(read_model_dir(args.model).labels)  # a bad model directory: one line before TensorFlow starts
    except ModelDirError as e:
        exit_with(e, args.verbose)
    if next(expand(args.paths), None) is None:
        no_photos_found(args.paths)
    quiet_tensorflow(args.verbose, on_demand=True)  # imported only if a Keras model must load (nothing cached)
    try:
        from model.inference import choose_runtime

        choose_runtime(args.runtime, args.precision)  # a pair this CPU cannot run: one line, before any actor starts
        if args.engine != "ray":  # with Ray, the model itself loads in the Ray actors
            from model.inference import Classifier

            classifier = Classifier(args.model, tta=args.tta, runtime=args.runtime, precision=args.precision)
            labels = classifier.labels
    except (ModelDirError, ValueError) as e:
        sys.exit(f"error: {e}")

    # A file name that is not UTF-8 is written as its original bytes, as the file system has it.
    sys.stdout.reconfigure(errors="surrogateescape")
    files, writers = [], []
    try:
        if args.csv:
            files.append(open(args.csv, "w", newline="", errors="surrogateescape"))
            writers.append(CsvRows(files[-1], labels))
        if args.json_file:
            files.append(open(args.json_file, "w"))
            writers.append(JsonList(files[-1]))
    except OSError as e:
        sys.exit(f"error: {e.filename}: {e.strerror}")
    if args.json or not (files or args.parquet):
        writers.append(JsonList(sys.stdout) if args.json else Lines())
    if args.engine == "ray":  # Ray Data shows its own progress
        from model import ray_batch

        predicted, failed = ray_batch.run(
            args.paths,
            args.model,
            writers,
            labels,
            batch_size=args.batch_size,
            actors=args.actors,
            tta=args.tta,
            address=args.address,
            parquet=args.parquet,
            runtime=args.runtime,
            precision=args.precision,
        )
    else:
        predicted, failed = predict_locally(args.paths, classifier, writers, bool(files), args.batch_size)
    for writer in writers:
        writer.close()
    for f in files:
        f.close()
    if not predicted + failed:
        no_photos_found(args.paths)
    if files or args.parquet:
        where = f" (see {args.csv or args.json_file or args.parquet})" if failed else ""
        print(
            f"{predicted} photo{'' if predicted == 1 else 's'} predicted, {failed} could not be read{where}",
            file=sys.stderr,
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
