"""What the app knows: the loaded model, the optional dataset, and the test-set predictions.

One `Scenes` object per app. Model calls go through a lock: TensorFlow already uses
both cores for one call, and one call at a time keeps memory flat under load.
"""
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from app import render
from model.data import load_dataset
from model.inference import Classifier
from model.preprocess import decode_rgb


@dataclass
class TestPhoto:
    photo_id: int          # 1-based position in the dataset (N for MIML's N.jpg)
    image: str
    truth: np.ndarray
    probs: np.ndarray
    predicted: np.ndarray

    def errors(self):
        return self.truth != self.predicted


class Scenes:
    def __init__(self, model_dir=None, data_dir=None):
        self.classifier = Classifier(model_dir)
        self.labels = self.classifier.labels
        self.thresholds = dict(zip(self.labels, self.classifier.thresholds.tolist()))
        self.dataset = load_dataset(data_dir) if data_dir else None
        self.lock = threading.Lock()
        self._thumbs = OrderedDict()
        self.test_photos = self._test_photos() if self.dataset else []

    def _test_photos(self):
        """The stored test predictions (computed once, at training), joined to the dataset's photos."""
        names, truth, probs = self.classifier.info.test_predictions()
        position = {name: i + 1 for i, name in enumerate(self.dataset.images)}
        predicted = self.classifier.decide(probs) if len(probs) else probs.astype(np.uint8)
        return [TestPhoto(position[n], n, t, p, d) for n, t, p, d in zip(names, truth, probs, predicted) if n in position]

    # --- photos -------------------------------------------------------------------
    def photo_path(self, photo_id):
        """Path of dataset photo `photo_id` (1-based), or None. Only ids reach the file system, never names."""
        if self.dataset is None or not 1 <= photo_id <= len(self.dataset.images):
            return None
        return self.dataset.path(photo_id - 1)

    def thumbnail(self, photo_id):
        if photo_id not in self._thumbs:
            self._thumbs[photo_id] = render.thumbnail(decode_rgb(self.photo_path(photo_id)))
            if len(self._thumbs) > 2000:
                self._thumbs.popitem(last=False)
        return self._thumbs[photo_id]

    # --- model ----------------------------------------------------------------------
    def analyse(self, pixels):
        """Probabilities, predicted labels and Grad-CAM maps for one model-input array, in one pass."""
        with self.lock:
            cams, probs = self.classifier.gradcam(pixels)
        return {**self.classifier.results(probs)[0], "cams": dict(zip(self.labels, cams))}

    def classify(self, batch):
        with self.lock:
            return self.classifier.classify(batch)

    def activations(self, pixels, layer):
        with self.lock:
            return self.classifier.activations(pixels, layer)
