"""The user's work in the runs folder (the app's door to it): datasets and their labels, models, jobs.

    RUNS/workspace.sqlite      the store (workspace.store): datasets, photos, every decision, models, jobs and the
                               active model, shared by every process on the runs folder
    RUNS/datasets/ID/          original/ (the photos), labels.csv (written from the store when a job starts or an
                               export is asked for: labelled photos only)

The --feedback folder (corrected labels from /api/feedback) is a store of its own, `Feedback`
(workspace.feedback): DIR/feedback.sqlite beside the photos, so that the folder stays a dataset on its own.

`Workspace` labels: create a dataset from an upload, label photos, read what the live model (workspace.learner)
suggests and which photos it asks for, export. Every decision is saved when it is made. `Registry`
(workspace.registry) holds the rest: the dataset list, models, the active model and training jobs
(workspace.jobs).

Every dataset upload comes through `create_dataset`: one import at a time (409 for a second), run in a worker
thread at the lowest CPU priority so that predictions keep the cores, checked against what is left of the runs
folder's quota before anything is written (507 past it), with model.datasets' limits (workspace.imports).
"""

import os
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from model.datasets import (
    DEFAULT_QUOTA_BYTES,
    DatasetError,
    DiskQuotaError,
    folder_bytes,
    import_limits,
    skipped_summary,
    slug,
)
from model.modeldir import write_atomically
from workspace import learner, legacy
from workspace.feedback import Feedback, FeedbackError, FeedbackLabelsError
from workspace.imports import import_upload, labels_csv_text
from workspace.registry import JobStatus, Registry, RegistryError
from workspace.store import DatasetRecord, Decision, LabelStore, StoreError

__all__ = [
    "Workspace",
    "WorkspaceError",
    "Decision",
    "Feedback",
    "FeedbackError",
    "FeedbackLabelsError",
    "JobStatus",
    "Registry",
    "RegistryError",
]
WorkspaceError = StoreError  # every refusal carries its HTTP status
STRATEGIES = ("auto", "random", "uncertain", "likely:LABEL")
MAX_QUEUE = 100


@dataclass(frozen=True)
class Created:
    dataset: str
    photos: int
    labels: list
    labelled: int
    skipped: list  # the first model.datasets.MAX_SKIPPED photos left out: [{"image", "error"}]
    skipped_count: int  # all of them


@dataclass(frozen=True)
class Summary:
    dataset: str
    name: str
    photos: int
    labels: list
    labelled: int
    per_label: dict  # {label: {"positive", "negative"}}
    estimate: dict  # {"map", "average_precision": {label: AP}, "photos", "method"}
    lacking: list  # labels model.train's split would leave without a positive or negative to fit or tune on
    ready: bool
    embedded: int  # photos with an embedding so far
    suggesting: list  # labels whose head exists (2 positives and 2 negatives)
    learning: bool  # the live model has not yet caught up with the latest decision
    error: str | None


@dataclass(frozen=True)
class QueueItem:
    image: str
    suggested: list
    probabilities: dict | None


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _lower_priority():
    """The import worker thread runs at nice 19 (Linux: priorities are per thread): requests come first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


class Workspace:
    def __init__(self, runs, embed=None, quota_bytes=DEFAULT_QUOTA_BYTES):
        """`embed(paths) -> (n, d)`: the embeddings to learn on (default: quick mode's, cached in RUNS/embeddings);
        `quota_bytes`: what the whole runs folder may hold (an upload that would not fit is refused)."""
        self.root = Path(runs)
        self.datasets_dir = self.root / "datasets"
        self.datasets_dir.mkdir(parents=True, exist_ok=True)
        self.store = LabelStore(self.root / "workspace.sqlite")
        self.quota_bytes = quota_bytes
        self._embed = embed or QuickEmbeddings(self.root / "embeddings")
        self._learners, self._lock = {}, threading.Lock()
        self._importing = threading.Lock()  # one dataset import at a time
        self._importer = ThreadPoolExecutor(1, thread_name_prefix="import", initializer=_lower_priority)

    # --- datasets ----------------------------------------------------------------------------------
    def create_dataset(self, source, filename, labels=None):
        """A new dataset from the ZIP `source` -> Created; WorkspaceError: 400 for an upload we cannot use, 409
        while another import runs, 507 past the runs folder's quota."""
        if not self._importing.acquire(blocking=False):
            raise WorkspaceError("another dataset is being imported; one import runs at a time: try again shortly", 409)
        try:
            dataset_id = slug(filename)
            folder = self.datasets_dir / dataset_id
            limits = import_limits(self.quota_bytes - folder_bytes(self.root))
            imported = self._importer.submit(import_upload, source, folder, labels, limits).result()
        except DiskQuotaError as e:
            raise WorkspaceError(str(e), 507) from None
        except DatasetError as e:
            raise WorkspaceError(str(e)) from None
        finally:
            self._importing.release()
        record = DatasetRecord(dataset_id, Path(filename or "").name, imported.label_names, folder, _now())
        self.store.add_dataset(record, imported.photos, imported.labelled)
        self.write_labels_csv(dataset_id)
        skipped, skipped_count = skipped_summary(imported.skipped)
        return Created(dataset_id, len(imported.photos), record.labels, len(imported.labelled), skipped, skipped_count)

    def _record(self, dataset_id):
        """The dataset's record; a folder of the old layout (dataset.json) put there later is imported on first use."""
        if not self.store.has_dataset(dataset_id):
            self._adopt(dataset_id)
        return self.store.dataset(dataset_id)

    def _adopt(self, dataset_id):
        folder = self.datasets_dir / str(dataset_id)
        try:
            found = "/" not in str(dataset_id) and legacy.import_dataset(self.store, folder)
        except DatasetError as e:
            raise WorkspaceError(f"dataset {dataset_id!r} cannot be opened in the labeller: {e}", 409) from None
        if not found:
            raise WorkspaceError(
                f"no dataset {dataset_id!r} to label: upload one on /label (the --data and --feedback folders "
                "are read-only here: upload them as a ZIP to correct them)",
                404,
            )

    def photo_path(self, dataset_id, image):
        record = self._record(dataset_id)
        if image not in {p.image for p in self.store.photos(dataset_id)}:
            raise WorkspaceError(f"no photo {image!r} in dataset {dataset_id!r}", 404)
        return record.folder / "original" / image

    # --- labels ------------------------------------------------------------------------------------
    def decide(self, dataset_id, image, labels):
        """Save one decision (the photo's full label set; None: not labelled any more) -> Decision."""
        self._record(dataset_id)
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(l, str) for l in labels)):
            raise WorkspaceError('send {"labels": [...]}: a list of label names (empty: none of them)')
        decision = self.store.set_labels(dataset_id, image, labels)
        self._learner(dataset_id).poke()
        return decision

    def history(self, dataset_id, image=None):
        self._record(dataset_id)
        return self.store.history(dataset_id, image)

    def _matrix(self, dataset_id, names, photos):
        """(last decision id, y (n, labels) uint8, known (n,) bool) in the dataset's photo order."""
        decision = self.store.last_decision(dataset_id)
        labelled = self.store.labelled(dataset_id)
        y = np.zeros((len(photos), len(names)), np.uint8)
        known = np.zeros(len(photos), bool)
        for i, p in enumerate(photos):
            if p.image in labelled:
                known[i] = True
                y[i] = [n in labelled[p.image] for n in names]
        return decision, y, known

    def _learner(self, dataset_id):
        with self._lock:
            if dataset_id not in self._learners:
                record = self.store.dataset(dataset_id)
                photos = self.store.photos(dataset_id)
                self._learners[dataset_id] = learner.Learner(
                    [record.folder / "original" / p.image for p in photos],
                    record.labels,
                    lambda: self._matrix(dataset_id, record.labels, photos),
                    lambda: self.store.last_decision(dataset_id),
                    self._embed,
                )
            return self._learners[dataset_id]

    def summary(self, dataset_id):
        record = self._record(dataset_id)
        photos = self.store.photos(dataset_id)
        live = self._learner(dataset_id)
        live.poke()  # another process may have labelled: the learner looks at the store's last decision
        decision, y, known = self._matrix(dataset_id, record.labels, photos)
        state = live.state
        positives = y[known].sum(0)
        lacking = learner.split_gaps(y[known], record.labels)
        ap = state.average_precision
        return Summary(
            dataset=dataset_id,
            name=record.name,
            photos=len(photos),
            labels=record.labels,
            labelled=int(known.sum()),
            per_label={
                n: {"positive": int(positives[j]), "negative": int(known.sum() - positives[j])}
                for j, n in enumerate(record.labels)
            },
            estimate={
                "map": round(float(np.mean(list(ap.values()))), 4) if ap else None,
                "average_precision": {n: round(v, 4) for n, v in ap.items()},
                "photos": int(known.sum()),
                "method": f"{learner.CV_FOLDS}-fold cross-validation on the labelled photos (labels with "
                f"{learner.MIN_EXAMPLES}+ positives and negatives)",
            },
            lacking=lacking,
            ready=not lacking,
            embedded=state.embedded,
            suggesting=[
                n
                for j, n in enumerate(record.labels)
                if state.probs is not None and not np.isnan(state.probs[:, j]).all()
            ],
            learning=state.decision != decision,
            error=state.error,
        )

    def queue(self, dataset_id, k=10, strategy="auto", seed=None):
        """Up to k unlabelled photos to label next, with the live model's suggestions -> [QueueItem]."""
        record = self._record(dataset_id)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_QUEUE:
            raise WorkspaceError(f"k must be a whole number from 1 to {MAX_QUEUE}")
        kind, _, label = strategy.partition(":")
        if kind not in ("auto", "random", "uncertain", "likely") or bool(label) != (kind == "likely"):
            raise WorkspaceError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        if kind == "likely" and label not in record.labels:
            raise WorkspaceError(f"unknown label {label!r}: this dataset's labels are {', '.join(record.labels)}")
        photos = self.store.photos(dataset_id)
        live = self._learner(dataset_id)
        live.poke()
        state = live.state
        _, y, known = self._matrix(dataset_id, record.labels, photos)
        j = record.labels.index(label) if kind == "likely" else None
        positives = np.flatnonzero(known & (y[:, j] == 1)) if j is not None else ()
        if kind == "likely" and state.z is not None and np.isnan(state.probs[:, j]).all() and not len(positives):
            raise WorkspaceError(f"no photo is labelled {label!r} yet: label one, then its look-alikes are found", 409)
        probs = state.probs if state.probs is not None else np.full((len(photos), len(record.labels)), np.nan)
        chosen = learner.choose(
            kind,
            k,
            probs,
            state.z,
            np.flatnonzero(~known),
            np.flatnonzero(known),
            np.random.default_rng(seed),
            j,
            positives,
        )
        return [self._item(photos[i].image, probs[i], record.labels) for i in chosen]

    @staticmethod
    def _item(image, probs, names):
        known = {n: round(float(p), 3) for n, p in zip(names, probs) if not np.isnan(p)}
        return QueueItem(image, [n for n, p in known.items() if p >= learner.THRESHOLD], known or None)

    # --- labels.csv and the export -------------------------------------------------------------------
    def _labels_csv(self, dataset_id):
        record = self._record(dataset_id)
        labelled = self.store.labelled(dataset_id)
        rows = [p.image for p in self.store.photos(dataset_id) if p.image in labelled]
        return record, rows, labels_csv_text(record.labels, [(image, labelled[image]) for image in rows])

    def write_labels_csv(self, dataset_id):
        """labels.csv of the labelled photos (an unlabelled photo is never a negative), written atomically into
        the dataset's folder for a training job. Does nothing for a dataset the labeller has never opened."""
        if not self.store.has_dataset(dataset_id):
            return
        record, rows, text = self._labels_csv(dataset_id)
        write_atomically(record.folder / "labels.csv", text.encode())

    def export_zip(self, dataset_id, out):
        """Write the labelled dataset (labels.csv + original/) as a ZIP to the file object `out`."""
        record, rows, text = self._labels_csv(dataset_id)
        self.write_labels_csv(dataset_id)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("labels.csv", text)
            for image in rows:
                zf.write(record.folder / "original" / image, f"original/{image}")
        return len(rows)


class QuickEmbeddings:
    """Quick mode's embeddings (the shipped model's backbone, one pass a photo), cached by content hash in `cache`;
    the backbone is loaded on first use."""

    def __init__(self, cache):
        self.cache, self._classifier, self._lock = cache, None, threading.Lock()

    def __call__(self, paths):
        from model.quick import cached_embeddings

        with self._lock:
            if self._classifier is None:
                from model.inference import Classifier
                from model.modeldir import SHIPPED_MODEL_DIR

                self._classifier = Classifier(SHIPPED_MODEL_DIR, tta="none")
            return cached_embeddings(self._classifier, paths, self.cache)
