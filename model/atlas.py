"""The dataset as the model sees it: every photo's pooled embedding and probabilities, and a 2-D map of them.

An `Atlas` is computed once per (model file, dataset listing) in a background thread and cached on disk
(`<cache dir>/atlas/<key>.npz`, written atomically), so a second start reads it, before it answers any
request, instead of running the model on every photo. Until it is ready, `status()` says how far it has got.

Similar photos: exact cosine search with numpy, one (n, d) x (d,) product (2000 x 1280 here: 0.5 ms). The map: PCA to 50 dimensions, then t-SNE to 2 (scikit-learn), scaled into 0..1.
"""

import hashlib
import io
import os
import threading
import zipfile

import numpy as np

from model.cache import cache_dir
from model.data import CONTRACT_SPLIT_SEED, split
from model.modeldir import write_atomically

SPLITS = ("train", "validation", "test")
BATCH = 8  # photos a forward pass: as fast as 32 here, and the interpreter it leaves in the pool is 4x smaller


def dataset_key(model_sha256, dataset):
    """sha256 of the model (its file's sha256 and TTA mode) and the dataset's listing (each photo's name and size)."""
    h = hashlib.sha256(model_sha256.encode())
    for i, name in enumerate(dataset.images):
        h.update(f"\n{name}\t{dataset.path(i).stat().st_size}".encode())
    return h.hexdigest()


def layout(embeddings, seed=0):
    """(n, d) -> (n, 2) in 0..1: PCA to at most 50 dimensions, then t-SNE (PCA alone below 5 photos)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(embeddings)
    if n < 2:
        return np.full((n, 2), 0.5, np.float32)
    reduced = PCA(min(50, n, embeddings.shape[1]), random_state=seed).fit_transform(embeddings)
    if n < 5:
        xy = np.pad(reduced[:, :2], ((0, 0), (0, max(0, 2 - reduced.shape[1]))))
    else:
        xy = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed).fit_transform(reduced)
    xy = xy - xy.min(axis=0)
    return (xy / max(float(xy.max()), 1e-12)).astype(np.float32)  # one scale for both axes keeps the shape


class Atlas:
    """Embeddings, probabilities and map layout of every photo of `dataset` under `classifier`'s model.

    `start()` reads the cache, or computes them in a daemon thread; `status()` says where it is.
    `similar` and `points` need it done (check `status()["ready"]` first)."""

    def __init__(self, classifier, dataset, folder=None):
        self.classifier = classifier
        self.dataset = dataset
        self.folder = folder or cache_dir() / "atlas"
        self.path = None  # the cache file, once its key is known
        self.from_cache = False  # True when the cache file was read instead of running the model
        self.progress = 0.0  # 0..1
        self.error = None
        self.ready = threading.Event()
        seed = classifier.card.split.seed
        seed = CONTRACT_SPLIT_SEED if seed is None else seed
        self.splits = [""] * len(dataset.images)
        for name, indices in zip(SPLITS, split(len(dataset.images), seed)):
            for i in indices:
                self.splits[i] = name
        self._thread = None
        self._stop = threading.Event()

    def stop(self):
        """Stop computing (the model is no longer served): the thread ends after its current batch."""
        self._stop.set()

    def start(self):
        """Read the cache now (tens of milliseconds), else compute everything in a background thread."""
        try:
            self.path = self._cache_path()
            with np.load(self.path) as npz:
                arrays = {k: npz[k] for k in ("embeddings", "probabilities", "xy")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # no cache yet, or a damaged one
            self._thread = threading.Thread(target=self._build, name="atlas", daemon=True)
            self._thread.start()
            return self
        self._set(**arrays)
        self.from_cache = True
        self.ready.set()
        return self

    def _cache_path(self):
        model = f"{self.classifier.info.sha256}-{self.classifier.tta}"  # TTA changes the embeddings
        return self.folder / f"{dataset_key(model, self.dataset)}.npz"

    def wait(self, timeout=None):
        """Block until done (or `timeout` seconds); RuntimeError if it failed."""
        self.ready.wait(timeout)
        if self.error:
            raise RuntimeError(self.error)
        return self

    def status(self):
        """{"ready": bool, "progress": 0..1, "message": what to tell a user while it is not ready}."""
        done = self.ready.is_set() and not self.error
        return {
            "ready": done,
            "progress": round(self.progress, 3),
            "message": None if done else self.error or f"computing similar photos: {self.progress:.0%}",
        }

    def _build(self):
        try:  # Linux: this thread only, and the decoding and LiteRT threads it starts: requests come first
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
        except (AttributeError, OSError):
            pass
        try:
            self.path = self.path or self._cache_path()
            arrays = self._compute()
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            write_atomically(self.path, buf.getvalue())
            self._set(**arrays)
        except Exception as e:  # a damaged photo, a full disk: the pages say so instead of waiting forever
            self.error = f"the dataset's embeddings could not be computed: {e}"
        finally:
            self.ready.set()

    def _compute(self):
        n = len(self.dataset.images)
        embeddings, probabilities = [], []
        for start in range(0, n, BATCH):
            if self._stop.is_set():
                raise RuntimeError("stopped: another model is in use")
            images = self.dataset.load_photos(range(start, min(n, start + BATCH)), self.classifier.size, workers=2)
            _, e, p = self.classifier.forward(images)
            embeddings.append(e)
            probabilities.append(p)
            self.progress = 0.9 * min(n, start + BATCH) / n  # the layout is the last tenth
        embeddings = np.concatenate(embeddings).astype(np.float32)
        xy = layout(embeddings)
        self.progress = 1.0
        return {"embeddings": embeddings, "probabilities": np.concatenate(probabilities).astype(np.float32), "xy": xy}

    def _set(self, embeddings, probabilities, xy):
        self.unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        self.probabilities = probabilities
        self.predicted = self.classifier.decide(probabilities)
        self.xy = xy
        self.progress = 1.0

    def _check(self):
        if not self.status()["ready"]:
            raise RuntimeError(self.status()["message"])

    def truth(self, i):
        return [l for l, on in zip(self.dataset.label_names, self.dataset.labels[i]) if on]

    def similar(self, embedding, k, exclude=None):
        """The k dataset photos whose embeddings are closest to `embedding` by cosine, most similar first;
        `exclude`: a 0-based index left out (the photo itself)."""
        self._check()
        # einsum, not `@`: OpenBLAS would split this product over threads that wait for the cores LiteRT's
        # threads are spinning on, about 5 ms a request in the server; einsum's one loop takes 0.5 ms.
        sims = np.einsum("nd,d->n", self.unit, embedding / max(float(np.linalg.norm(embedding)), 1e-12))
        if exclude is not None:
            sims[exclude] = -np.inf
        k = min(k, len(sims) - (exclude is not None))
        top = np.argpartition(-sims, k - 1)[:k] if k > 0 else np.zeros(0, int)
        return [
            {
                "photo_id": int(i) + 1,
                "image": self.dataset.images[i],
                "split": self.splits[i],
                "labels": self.truth(i),
                "similarity": round(float(sims[i]), 4),
            }
            for i in top[np.argsort(-sims[top], kind="stable")]
        ]

    def points(self):
        """Every photo on the map: id, x, y (0..1), split, true and predicted labels."""
        self._check()
        return [
            {
                "photo_id": i + 1,
                "x": round(float(x), 5),
                "y": round(float(y), 5),
                "split": self.splits[i],
                "truth": self.truth(i),
                "predicted": [l for l, on in zip(self.classifier.labels, self.predicted[i]) if on],
            }
            for i, (x, y) in enumerate(self.xy)
        ]
