"""Batch prediction on Ray Data: the same rows as model/batch.py, on one machine or a Ray cluster.

    python -m model.predict SOURCE --engine ray [--address ADDRESS] --csv FILE | --parquet DIR

The pipeline (`predictions`):
1. the paths: a folder (walked as in-process: `model.batch.expand`), a glob, or a text file of paths,
   one a line; local paths or URIs that pyarrow's file systems read (s3://, gs://, hdfs://, file://);
2. `read_and_decode`, in parallel Ray tasks: each reads its files' bytes and letterboxes them with
   `model.preprocess.load_image` (the code training and the app use); a file that cannot be read or
   decoded becomes an error row, with the in-process path's message, and never fails the job;
3. `Predictor`, an actor pool (one model per actor, a `Classifier` on --runtime / --precision): probabilities and
   the labels at the model's tuned thresholds, `batch_size` photos a forward pass.
The order of the paths is kept (Ray Data's `preserve_order`), so the rows come out in the in-process
order and `--csv` is byte for byte what `python -m model.predict --csv` writes. `--parquet` writes Ray
Data's files (one or more a task) into DIR with the same columns, the probabilities unrounded (float32).
"""

import glob
import os
import sys
from pathlib import Path

import numpy as np

from model.batch import IMAGE_SUFFIXES, expand, open_regular, why
from model.modeldir import read_model_dir

DECODE_BATCH = (
    64  # photos a decoding task: big enough that Ray's per-task cost (a few ms) is small beside ~1.5 ms a photo
)
# Half a CPU a decoding task: two share a core, so one's file reads (slow on a network store) overlap the
# other's decoding. Being unlike the actors' 1 CPU, it also keeps Ray from fusing decoding into the model
# actors: decoding scales with the cluster's CPUs, not with the number of model copies.
DECODE_CPUS = 0.5


def is_uri(path):
    return "://" in str(path)


def list_paths(sources):
    """Every path SOURCE names, as strings, in the order the in-process path uses for the same arguments.

    A folder is walked for image files (name order, as `model.batch.expand`); a name with * ? or [ is a
    glob (sorted; `**` recurses); any other file without an image suffix is a list of paths, one a line
    (blank lines and lines starting with # skipped); anything else, missing files included, is itself."""
    for source in map(str, sources):
        if is_uri(source):
            yield from _list_uri(source)
        elif glob.has_magic(source):
            yield from (p for p in sorted(glob.glob(source, recursive=True)) if not os.path.isdir(p))
        elif os.path.isfile(source) and Path(source).suffix.lower() not in IMAGE_SUFFIXES:
            with open(source, encoding="utf-8", errors="surrogateescape") as f:
                yield from (line.strip() for line in f if line.strip() and not line.startswith("#"))
        else:
            yield from map(str, expand([source]))


def _list_uri(uri):
    """A URI's files: a folder's image files (recursive, sorted) or the file itself."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    info = filesystem.get_file_info(path)
    if info.type != fs.FileType.Directory:
        yield uri
        return
    scheme = uri.split("://", 1)[0]
    found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    yield from sorted(
        f"{scheme}://{f.path}"
        for f in found
        if f.type == fs.FileType.File and Path(f.path).suffix.lower() in IMAGE_SUFFIXES
    )


def read_bytes(path):
    """A file's bytes: a local path opened as the in-process path opens it (regular files only), a URI with pyarrow."""
    if is_uri(path):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_file(inner) as f:
            return f.readall()
    with open_regular(path) as f:
        return f.read()


def read_and_decode(batch, size):
    """A Ray Data batch {'path'} -> {'path', 'image' (n, size, size, 3) uint8, 'error' ('' when readable)}."""
    from model.preprocess import ImageError, load_image  # ImageError is a ValueError: named for the reader

    paths = list(batch["path"])
    images = np.zeros((len(paths), size, size, 3), np.uint8)
    errors = []
    for i, path in enumerate(paths):
        try:
            images[i] = load_image(read_bytes(path), size)
            errors.append("")
        except (ImageError, OSError, ValueError) as e:  # ValueError: a URI pyarrow cannot read (unknown scheme)
            errors.append(why(e))
    return {"path": np.array(paths, dtype=object), "image": images, "error": np.array(errors, dtype=object)}


class Predictor:
    """One Classifier an actor; a batch of decoded rows -> result rows (error rows pass through)."""

    def __init__(self, model_dir, batch_size, tta=None, runtime="auto", precision="auto"):
        from model.cli import quiet_tensorflow

        quiet_tensorflow(on_demand=True)  # imported only if a Keras model must load (nothing cached)
        from model.inference import Classifier

        self.classifier = Classifier(model_dir, tta=tta, runtime=runtime, precision=precision)
        self.batch_size = batch_size

    def __call__(self, batch):
        clf = self.classifier
        ok = batch["error"] == ""
        probs = np.full((len(ok), len(clf.labels)), np.nan, np.float32)
        predicted = np.full(len(ok), "", dtype=object)
        score, unfamiliar = np.full(len(ok), np.nan, np.float32), np.zeros(len(ok), bool)
        if ok.any():
            probs[ok], embeddings = clf.probabilities_and_embeddings(batch["image"][ok], self.batch_size)
            known = clf.familiarity(embeddings)
            if known[0] is not None:
                score[ok], unfamiliar[ok] = [f.score for f in known], [f.unfamiliar for f in known]
            decided = clf.decide(probs[ok], unfamiliar[ok])
            predicted[ok] = [" ".join(l for l, on in zip(clf.labels, row) if on) for row in decided]
        return {
            "path": batch["path"],
            **{l: probs[:, i] for i, l in enumerate(clf.labels)},
            "predicted": predicted,
            "familiarity": score,
            "unfamiliar": unfamiliar,
            "error": batch["error"],
        }


def start(address=None, **kwargs):
    """ray.init: a local Ray (as many CPUs as the machine has) or the cluster at `address`; idempotent."""
    import ray

    if not ray.is_initialized():
        kwargs.setdefault("include_dashboard", False)  # a local Ray needs none (ray[default] would start one)
        ray.init(address=address, **kwargs)
    return ray


def input_size(info):
    size = info.card.training.input_size
    return int(size) if size else info.load_keras().input_shape[1]


def predictions(paths, model_dir, batch_size=32, actors=1, tta=None, runtime="auto", precision="auto"):
    """The Ray Dataset of result rows for `paths` (a list of strings), in their order; Ray must be started."""
    import ray

    info = read_model_dir(model_dir)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    blocks = max(1, min(len(paths) // DECODE_BATCH, 4096))
    return (
        ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        .map_batches(
            read_and_decode,
            fn_kwargs={"size": input_size(info)},
            batch_size=DECODE_BATCH,
            batch_format="numpy",
            num_cpus=DECODE_CPUS,
        )
        .map_batches(
            Predictor,
            fn_constructor_kwargs={
                "model_dir": str(Path(model_dir).resolve()),
                "batch_size": batch_size,
                "tta": tta,
                "runtime": runtime,
                "precision": precision,
            },
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
            batch_size=batch_size,
            batch_format="numpy",
        )
    )


def results(dataset, labels):
    """Result dicts as `model.batch.predict_paths` yields them (probabilities rounded to 4 places), streamed."""
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        for i, path in enumerate(batch["path"]):
            if batch["error"][i]:
                yield {"path": path, "error": batch["error"][i]}
            else:
                yield {
                    "path": path,
                    "probabilities": {l: round(float(batch[l][i]), 4) for l in labels},
                    "predicted": batch["predicted"][i].split(),
                    "familiarity": None
                    if np.isnan(batch["familiarity"][i])
                    else {
                        "score": round(float(batch["familiarity"][i]), 4),
                        "unfamiliar": bool(batch["unfamiliar"][i]),
                    },
                }


def run(
    sources,
    model_dir,
    writers,
    labels,
    batch_size=32,
    actors=1,
    tta=None,
    address=None,
    parquet=None,
    runtime="auto",
    precision="auto",
):
    """The CLI's --engine ray over the photo files and folders `sources`: start Ray (the cluster at `address`, or
    a local one), predict, write (to the `parquet` folder with Ray, else through `writers`); (predicted, failed).
    `runtime`, `precision`: what each actor's Classifier runs (model.inference.choose_runtime)."""
    paths = list(list_paths(sources))
    if not paths:
        return 0, 0
    start(address)
    dataset = predictions(paths, model_dir, batch_size, actors, tta, runtime, precision)
    if parquet:
        dataset.write_parquet(parquet)
        failed = dataset_errors(parquet)
        return len(paths) - failed, failed
    failed = predicted = 0
    for result in results(dataset, labels):
        failed += "error" in result
        predicted += "error" not in result
        for writer in writers:
            writer.write(result)
    return predicted, failed


def dataset_errors(folder):
    """Error rows in the parquet files written to `folder`."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(folder, columns=["error"])
    return int(pc.sum(pc.not_equal(table["error"], "")).as_py() or 0)


if __name__ == "__main__":
    sys.exit("run it as: python -m model.predict SOURCE --engine ray --csv FILE")
