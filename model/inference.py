"""Running a trained model: probabilities, labels, Grad-CAM and layer activations.

The CLI and the web app share `Classifier`. Every call goes through traced
`tf.function`s or `predict_on_batch`, never `model.predict`, whose fixed cost per
call (70-90 ms here) would dominate serving one photo.
"""
import numpy as np

from model.modeldir import read_model_dir
from model.network import gradcam_layer
from model.preprocess import load_image
from model.thresholds import apply_thresholds


def predict_arrays(model, images, batch_size=64):
    """Probabilities for a uint8 array (n, size, size, 3), in batches."""
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    return np.concatenate([np.asarray(model.predict_on_batch(images[i:i + batch_size].astype(np.float32)))
                           for i in range(0, len(images), batch_size)])


class Classifier:
    """A model directory loaded for use: `classify`, `gradcam`, `activations`."""

    def __init__(self, model_dir=None):
        import tensorflow as tf
        import keras
        self.tf, self.keras = tf, keras
        self.info = read_model_dir(model_dir)
        self.model = self.info.load_keras()
        self.labels, self.thresholds = self.info.labels, self.info.thresholds
        if self.model.output_shape[-1] != len(self.labels):
            from model.modeldir import ModelDirError
            raise ModelDirError(f"{self.info.path / 'model.keras'}: has {self.model.output_shape[-1]} outputs "
                                f"but thresholds.json names {len(self.labels)} labels")
        self.size = self.model.input_shape[1]
        self._forward = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        target = self.model.get_layer(gradcam_layer(self.model))
        self._cam_model = keras.Model(self.model.inputs, [target.output, self.model.output])
        self._gradcam = tf.function(self._gradcam_graph, reduce_retracing=True)
        self._layer_models = {}

    def load(self, source):
        """Bytes, path or file object -> the model's input array; raises preprocess.ImageError."""
        return load_image(source, self.size)

    def probabilities(self, images, batch_size=32):
        """(n, size, size, 3) uint8, or a list of n images -> (n, labels) probabilities, `batch_size` photos a pass."""
        images = np.asarray(images)  # tf.constant converts a list of arrays several times slower than the pass itself
        out = np.empty((0, len(self.labels)), dtype=np.float32)
        for i in range(0, len(images), batch_size):
            out = np.concatenate([out, self._forward(self.tf.constant(images[i:i + batch_size], self.tf.float32)).numpy()])
        return out

    def decide(self, probs):
        """0/1 predictions under the model's tuned thresholds."""
        return apply_thresholds(np.atleast_2d(probs), self.thresholds, self.info.at_least_one)

    def results(self, probs):
        """(n, labels) probabilities -> [{'probabilities': {label: p}, 'predicted': [labels]}], one a photo."""
        probs = np.atleast_2d(probs)
        return [{"probabilities": {l: round(float(p), 4) for l, p in zip(self.labels, row)},
                 "predicted": [l for l, on in zip(self.labels, flags) if on]}
                for row, flags in zip(probs, self.decide(probs))]

    def classify(self, images, batch_size=32):
        """results() for each image."""
        return self.results(self.probabilities(images, batch_size))

    def _gradcam_graph(self, image):
        tf = self.tf
        with tf.GradientTape() as tape:
            features, probs = self._cam_model(image[None], training=False)
            scores = probs[0]
        # One gradient per label, d p_label / d features, in a single vectorised jacobian.
        grads = tape.jacobian(scores, features)[:, 0]                # (labels, h, w, channels)
        weights = tf.reduce_mean(grads, axis=(1, 2))                  # (labels, channels)
        cams = tf.nn.relu(tf.einsum("hwc,lc->lhw", features[0], weights))
        peak = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
        return cams / tf.maximum(peak, 1e-12), probs[0]

    def gradcam(self, image):
        """Grad-CAM maps (labels, h, w) in 0..1 at the last conv layer's resolution, and the probabilities."""
        cams, probs = self._gradcam(self.tf.constant(image, self.tf.float32))
        return cams.numpy(), probs.numpy()

    def layers(self):
        """[(name, output shape, is convolutional)] for every layer after the input."""
        conv = (self.keras.layers.Conv2D, self.keras.layers.DepthwiseConv2D, self.keras.layers.ReLU,
                self.keras.layers.BatchNormalization, self.keras.layers.Add, self.keras.layers.MaxPooling2D)
        return [(l.name, tuple(l.output.shape[1:]), isinstance(l, conv) and len(l.output.shape) == 4)
                for l in self.model.layers[1:]]

    def activations(self, image, layer_name):
        """Output of `layer_name` for one image: (h, w, channels). Raises KeyError for an unknown layer."""
        if layer_name not in self._layer_models:
            try:
                layer = self.model.get_layer(layer_name)
            except ValueError:
                raise KeyError(layer_name) from None
            model = self.keras.Model(self.model.inputs, layer.output)
            self._layer_models[layer_name] = self.tf.function(lambda x: model(x, training=False))
        return self._layer_models[layer_name](self.tf.constant(image[None], self.tf.float32))[0].numpy()
