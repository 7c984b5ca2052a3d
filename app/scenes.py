"""What the app knows: the loaded model, the optional dataset, and the test-set predictions.

One `Scenes` object per app. Every model call goes through `model.inference.Classifier`,
which runs forward passes in a pool of LiteRT interpreters (so waitress's threads overlap
decoding, inference and rendering) and does its own locking where it needs any.
"""

import functools
from pathlib import Path
from dataclasses import dataclass

import numpy as np
from flask import current_app

from app import render
from model.inference import Classifier, DataError
from workspace import Feedback


@dataclass
class TestPhoto:
    photo_id: int  # 1-based position in the dataset (N for MIML's N.jpg)
    image: str
    truth: np.ndarray
    probs: np.ndarray
    predicted: np.ndarray

    def errors(self):
        return self.truth != self.predicted


def scenes():
    """The app's Scenes (create_app keeps one per app in app.extensions)."""
    return current_app.extensions["scenes"]


class Scenes:
    def __init__(
        self,
        model_dir=None,
        data_dir=None,
        runtime="auto",
        workers=None,
        explore=False,
        feedback_dir=None,
        precision="auto",
    ):
        """`explore`: compute (or read from the cache) the dataset's embeddings and map in the background,
        for similar photos and /map; `feedback_dir`: where corrected labels are stored (None: feedback is off)."""
        classifier = Classifier(model_dir, runtime=runtime, precision=precision, workers=workers)
        self.given_dataset = classifier.dataset(data_dir) if data_dir else None  # --data
        self.explore = explore
        # Bounded and thread-safe (functools' lock): a thumbnail is decoded once, the 2000 latest are kept.
        self.thumbnail = functools.lru_cache(maxsize=2000)(self._thumbnail)
        self.use(classifier)
        self.feedback = Feedback(feedback_dir) if feedback_dir else None

    def use(self, classifier):
        """Serve `classifier` from now on (the model the pages use; /models switches it). The gallery, photo
        pages and map show the model's own dataset when it has one on disk with its labels, else --data's."""
        self.classifier, self.labels, self.thresholds = classifier, classifier.labels, classifier.thresholds
        self.dataset = self._own_dataset(classifier) or self.given_dataset
        self.thumbnail.cache_clear()  # photo ids belong to the dataset
        self.test_photos = self._test_photos() if self.dataset else []
        if getattr(self, "atlas", None):
            self.atlas.stop()  # the previous model's: background work only for the model in use
        # similar photos and the map belong to the model that embeds them (each model's own cache)
        self.atlas = classifier.atlas(self.dataset).start() if self.explore and self.dataset else None

    def _own_dataset(self, classifier):
        """The dataset the model was trained on (metrics.json's training "dataset"), when it is readable, has the
        model's labels and is not --data's; else None."""
        path = classifier.card.training.dataset
        given = self.given_dataset
        if not path or (given is not None and Path(path).resolve() == Path(given.root).resolve()):
            return None
        try:
            own = classifier.dataset(path)
        except (DataError, OSError):
            return None
        return own if own.label_names == classifier.labels else None

    def _test_photos(self):
        """The stored test predictions (computed once, at training), joined to the dataset's photos."""
        names, truth, probs = self.classifier.test_predictions()
        position = {name: i + 1 for i, name in enumerate(self.dataset.images)}
        predicted = self.classifier.decide(probs) if len(probs) else probs.astype(np.uint8)
        return [
            TestPhoto(position[n], n, t, p, d) for n, t, p, d in zip(names, truth, probs, predicted) if n in position
        ]

    def photo_path(self, photo_id):
        """Path of dataset photo `photo_id` (1-based), or None. Only ids reach the file system, never names."""
        if self.dataset is None or not 1 <= photo_id <= len(self.dataset.images):
            return None
        return self.dataset.path(photo_id - 1)

    def _thumbnail(self, photo_id):
        """JPEG bytes of a dataset photo's thumbnail; raises ImageError for a damaged photo."""
        return render.thumbnail(self.classifier, self.photo_path(photo_id))
