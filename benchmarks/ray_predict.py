"""Ray Data batch prediction against the in-process streaming path, on the same photos, in one run.

    python benchmarks/ray_predict.py --data DIR [--model DIR] [--batch-size 32] [--actors 1] [--photos N]

Both paths run in this process on DIR/original (all 2000 MIML photos by default, plus one file that is not
a photo, which both must report as an error row). In-process: `model.batch.predict_paths` after loading the
model (as benchmarks/batch.py times it), before and after the Ray run, averaged (another process may
share the CPU). Ray: a local Ray with every core (`ray.init(num_cpus=cores)`),
`model.ray_batch.predictions` iterated to the last row; timed from the start of the execution (it includes
starting the model actor, reported apart) and from its first row to its last (steady state). Then the
comparison: the same paths with the same errors, identical predicted labels, the largest difference of
the unrounded probabilities, and whether the two CSV files (model.predict's CsvRows) are byte-identical.
Prints a JSON object.
"""

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def in_process(paths, model_dir, batch_size):
    import numpy as np
    from model.batch import predict_paths
    from model.inference import Classifier

    class Recording(Classifier):
        """Keeps each photo's unrounded probabilities beside the rounded ones results() gives."""

        def results(self, probs):
            out = super().results(probs)
            for r, p in zip(out, np.atleast_2d(probs)):
                r["raw"] = p
            return out

    clf = Recording(model_dir)
    clf.classify(np.stack([clf.load(p) for p in paths[:batch_size]]), batch_size)  # warm: plan the batch shape
    start = time.perf_counter()
    rows = list(predict_paths(clf, iter(paths), batch_size))
    return rows, time.perf_counter() - start, clf.labels


def on_ray(paths, model_dir, batch_size, actors, labels):
    import numpy as np
    from model import ray_batch

    rows, first, n_first = [], None, 0
    start = time.perf_counter()
    dataset = ray_batch.predictions([str(p) for p in paths], model_dir, batch_size, actors)
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        if first is None:
            first, n_first = time.perf_counter(), len(batch["path"])
        for i, path in enumerate(batch["path"]):
            if batch["error"][i]:
                rows.append({"path": path, "error": batch["error"][i]})
            else:
                raw = np.array([batch[l][i] for l in labels], np.float32)
                rows.append(
                    {
                        "path": path,
                        "probabilities": {l: round(float(p), 4) for l, p in zip(labels, raw)},
                        "predicted": batch["predicted"][i].split(),
                        "raw": raw,
                    }
                )
    end = time.perf_counter()
    return rows, end - start, first - start, (len(rows) - n_first) / (end - first)


def csv_text(rows, labels):
    from model.predict import CsvRows

    out = io.StringIO()
    writer = CsvRows(out, labels)
    for r in rows:
        writer.write(r)
    return out.getvalue()


def main():
    import numpy as np
    import ray
    from model.modeldir import SHIPPED_MODEL_DIR

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="the MIML dataset (its original/ folder is predicted)")
    p.add_argument("--model", default=str(SHIPPED_MODEL_DIR))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--photos", type=int, help="only the first N photos (default: all)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        photos = sorted((Path(args.data) / "original").iterdir())[: args.photos]
        (work / "not-a-photo.jpg").write_text("not a photo")
        paths = photos + [work / "not-a-photo.jpg"]
        load = os.getloadavg()[0]
        local, before_s, labels = in_process(paths, args.model, args.batch_size)
        started = time.perf_counter()
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token written to ~/.ray for a local run
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=str(work / "ray"), log_to_driver=False)
        init_s = time.perf_counter() - started
        remote, ray_s, first_s, steady = on_ray(paths, args.model, args.batch_size, args.actors, labels)
        ray.shutdown()
        after_s = in_process(paths, args.model, args.batch_size)[1]  # again: another process may share the CPU
        local_s = (before_s + after_s) / 2
    finally:
        shutil.rmtree(work, ignore_errors=True)

    good = [(a, b) for a, b in zip(local, remote) if "error" not in a]
    n = len(paths)
    print(
        json.dumps(
            {
                "photos": n,
                "cores": os.cpu_count(),
                "load_average_before": load,
                "batch_size": args.batch_size,
                "actors": args.actors,
                "same_paths_in_order": [r["path"] for r in local] == [str(r["path"]) for r in remote],
                "same_errors": [r.get("error") for r in local] == [r.get("error") for r in remote],
                "identical_labels": all(a["predicted"] == b["predicted"] for a, b in good),
                "max_abs_probability_difference": float(max(np.abs(a["raw"] - b["raw"]).max() for a, b in good)),
                "csv_byte_identical": csv_text(local, labels) == csv_text(remote, labels),
                "in_process_photos_per_s": n / local_s,
                "in_process_photos_per_s_before_and_after": [n / before_s, n / after_s],
                "ray_init_s": init_s,
                "ray_photos_per_s_end_to_end": n / ray_s,
                "ray_until_first_row_s": first_s,
                "ray_photos_per_s_steady": steady,
                "ratio_end_to_end": local_s / ray_s,
                "ratio_steady": steady / (n / local_s),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
