"""What serving needs to know of a Keras model, cached beside its converted forms so that a server whose
OpenVINO IR or LiteRT flatbuffer is cached never loads the Keras model (about 3 CPU-s for the ensemble) or
TensorFlow.

`NetworkFacts` holds the input size, the number of outputs (checked against thresholds.json's labels), whether
the head is a class-activation head, the `probabilities` layer's kernel and bias (class maps and a quick model's
head) and the layer list the layer browser and /model show. It is read from the Keras model the first time a
Classifier loads it, and cached as `<cache>/facts/<model.keras sha256>.npz` (no pickles; a damaged file reads as
none, and the Keras model is loaded again).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.cache import cache_dir
from model.modeldir import write_atomically

VERSION = 1  # of the file's contents: another version reads as none


@dataclass(frozen=True)
class NetworkFacts:
    size: int  # the input's side
    outputs: int  # probabilities per photo
    cam_head: bool  # pooled features -> dense: a class map is relu(F . kernel[:, label]) (model.inference)
    kernel: np.ndarray  # the "probabilities" layer's (d, outputs), float32
    bias: np.ndarray  # (outputs,), float32
    layers: tuple[tuple[str, tuple, bool], ...]  # every layer but the input: (name, output shape, convolutional)
    input_name: str  # the input layer's name (a layer, though not in `layers`)

    @classmethod
    def of(cls, model: Any) -> NetworkFacts:
        """The facts of a loaded Keras model."""
        import keras

        from model.network import has_cam_head

        conv = (
            keras.layers.Conv2D,
            keras.layers.DepthwiseConv2D,
            keras.layers.ReLU,
            keras.layers.BatchNormalization,
            keras.layers.Add,
            keras.layers.MaxPooling2D,
            keras.layers.Concatenate,  # an ensemble's joined maps
        )
        kernel, bias = (w.numpy() for w in model.get_layer("probabilities").weights)
        return cls(
            size=int(model.input_shape[1]),
            outputs=int(model.output_shape[-1]),
            cam_head=has_cam_head(model),
            kernel=np.asarray(kernel, np.float32),
            bias=np.asarray(bias, np.float32),
            layers=tuple(
                (l.name, tuple(l.output.shape[1:]), isinstance(l, conv) and len(l.output.shape) == 4)
                for l in model.layers[1:]
            ),
            input_name=model.layers[0].name,
        )

    @property
    def layer_names(self) -> set[str]:
        """Every layer's name, the input's too."""
        return {self.input_name, *(name for name, _, _ in self.layers)}

    def to_bytes(self) -> bytes:
        meta = {
            "version": VERSION,
            "size": self.size,
            "outputs": self.outputs,
            "cam_head": self.cam_head,
            "layers": self.layers,
            "input_name": self.input_name,
        }
        buf = io.BytesIO()
        np.savez(buf, kernel=self.kernel, bias=self.bias, meta=np.array(json.dumps(meta)))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NetworkFacts:
        """ValueError (or KeyError, zipfile.BadZipFile) for a damaged or older file."""
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            meta, kernel, bias = json.loads(str(f["meta"])), f["kernel"], f["bias"]
        if meta.get("version") != VERSION or kernel.shape[-1:] != (meta["outputs"],) or bias.shape != kernel.shape[-1:]:
            raise ValueError("not the facts of this version")
        return cls(
            size=int(meta["size"]),
            outputs=int(meta["outputs"]),
            cam_head=bool(meta["cam_head"]),
            kernel=kernel.astype(np.float32),
            bias=bias.astype(np.float32),
            layers=tuple((str(n), tuple(shape), bool(spatial)) for n, shape, spatial in meta["layers"]),
            input_name=str(meta["input_name"]),
        )


def facts_path(model_sha256: str) -> Path:
    return cache_dir() / "facts" / f"{model_sha256}.npz"


def cached_facts(model_sha256: str) -> NetworkFacts | None:
    """The cached facts of model file `model_sha256`, or None when there are none or they cannot be read."""
    try:
        return NetworkFacts.from_bytes(facts_path(model_sha256).read_bytes())
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None


def write_facts(model_sha256: str, facts: NetworkFacts) -> None:
    write_atomically(facts_path(model_sha256), facts.to_bytes())
