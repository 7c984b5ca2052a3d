"""Running a trained model: one forward pass gives probabilities, class maps and the embedding.

`Classifier` is the one door into a model directory for the CLIs and the web app.
Every pass that needs no gradient runs one of three runtimes over the same three outputs (the last
convolutional feature map, the pooled embedding and the probabilities), converted from `model.keras`
once and cached, keyed by the model file's sha256:
- "openvino" (model/openvino_runtime.py): bf16 on CPUs with AVX-512 bf16 / AMX, else float32;
- "litert": a TensorFlow Lite float32 flatbuffer with XNNPACK (`ai-edge-litert`), within 1e-5 of Keras;
- "keras": a traced `tf.function`, for comparison and tests.
`runtime="auto"` (the default) is the fastest that passes the parity gate (tests/test_parity.py) on this
CPU, as measured in docs/runtime.md: OpenVINO bf16 where the CPU has AMX / AVX-512 bf16, else LiteRT float32
(OpenVINO float32 was no faster than LiteRT here).

The Keras model itself is loaded only when something needs it (`Classifier.model`): a conversion, runtime "keras",
the layer browser, the gradient class maps of a head that has no class-activation form. What serving needs to know
of the network (input size, outputs, the head's kernel, the layer list) is cached with the converted models
(model/facts.py), so a server whose model is cached neither loads the Keras model nor imports TensorFlow.

Test-time augmentation: a model directory whose thresholds.json says `"tta": "flip"` (its
thresholds tuned on validation that way) is run on each photo and its mirror image in one pass,
inside the flatbuffer: the probabilities and embeddings are the two means, the feature map the
mean of the photo's and the mirror's flipped back, so class maps stay where the photo has them.

Class maps: our head is global average pooling, dropout and one dense sigmoid per
label, so Grad-CAM's weights (the spatial mean of d p / d F) are the dense kernel
times a positive scalar per label, which the per-label normalisation cancels:
Grad-CAM = relu(F . W[:, label]) / max, a small matmul on the forward's feature map.
Heads of another form (the seed CNN) keep the gradient computation in TensorFlow.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from model.atlas import Atlas
from model.cache import cache_dir
from model.cli import without_start_up_noise
from model.data import CONTRACT_SPLIT_SEED, DataError, Dataset, load_dataset  # noqa: F401  (DataError: the app's door)
from model.facts import NetworkFacts, cached_facts, write_facts
from model.familiarity import Familiarity, TrainingPhotos
from model.metrics import HEADLINE, evaluate
from model.modeldir import ModelCard, ModelDirError, read_model_dir, write_atomically
from model.preprocess import (  # the image error types are re-exported: the app's door to them
    ImageError,  # noqa: F401
    ImageTooLargeError,  # noqa: F401
    UnsupportedImageError,  # noqa: F401
    decode,
    decoded_pixels,
    letterbox,
    load_image,
)
from model.thresholds import apply_thresholds

RUNTIMES = ("auto", "openvino", "litert", "keras")
PRECISIONS = ("auto", "f32", "bf16", "int8")
DEFAULT_WORKERS = 2  # forward passes at once (benchmarks/fast_path.py, openvino_layout.py: layouts)
ImageSource = bytes | str | Path | IO[bytes]  # what `load`, `analyse` and the like accept
DISPLAY_SIZE = 480  # the longest side of the photo a page shows


@dataclass
class Analysis:
    """Everything the app shows for one photo, from one decode and one forward pass."""

    image: object  # PIL image: the upright photo letterboxed to at most DISPLAY_SIZE (the model's framing)
    size: tuple[int, int]  # (width, height) of the upright photo as decoded
    pixels: np.ndarray  # the model's input, (size, size, 3) uint8
    probabilities: dict[str, float]  # label -> probability
    predicted: list[str]  # labels at or above their tuned thresholds
    cams: dict[str, np.ndarray]  # label -> class map (h, w) in 0..1 at the feature map's resolution
    embedding: np.ndarray  # pooled features, (d,) float32
    familiarity: Familiarity | None = None  # None for a model directory without familiarity.npz


def with_outputs(model: Any, tta: str = "none") -> Any:
    """`model` with three outputs: the last feature map, the pooled embedding, the probabilities;
    with tta="flip", each the mean over the photo and its mirror image (the mirror's map flipped back)."""
    import keras

    from model.network import embedding_layer, flip_tta, gradcam_layer

    three = keras.Model(
        model.inputs,
        [model.get_layer(gradcam_layer(model)).output, model.get_layer(embedding_layer(model)).output, model.output],
    )
    return flip_tta(three, spatial=(0,)) if tta == "flip" else three


def _cache_path(model_sha256: str, tta: str) -> Path:
    return cache_dir() / "litert" / f"{model_sha256}{'' if tta == 'none' else '-' + tta}.tflite"


def cached_flatbuffer(model_sha256: str, tta: str = "none") -> bytes | None:
    """The cached flatbuffer of model file `model_sha256` (and TTA mode), or None when there is none or it does
    not match its sha256 (a half-written or damaged cache never reaches LiteRT)."""
    path = _cache_path(model_sha256, tta)
    try:
        flatbuffer = path.read_bytes()
        if hashlib.sha256(flatbuffer).hexdigest() == path.with_suffix(".sha256").read_text().strip():
            return flatbuffer
    except OSError:
        pass
    return None


def litert_flatbuffer(three_outputs: Callable[[], Any], model_sha256: str, tta: str = "none") -> bytes:
    """The float32 flatbuffer of the Keras model `three_outputs()` gives (called only when nothing is cached),
    converted once per model file (and TTA mode) and cached as `<model sha256>[-flip].tflite` with the
    flatbuffer's own sha256 beside it (see cached_flatbuffer)."""
    flatbuffer = cached_flatbuffer(model_sha256, tta)
    if flatbuffer is not None:
        return flatbuffer
    import tensorflow as tf

    path = _cache_path(model_sha256, tta)
    check = path.with_suffix(".sha256")
    # from_keras_model freezes the weights into the file (a concrete function would keep them as
    # uninitialised resource variables); Keras prints its intermediate export to stdout, hide it.
    with contextlib.redirect_stdout(io.StringIO()):
        flatbuffer = tf.lite.TFLiteConverter.from_keras_model(three_outputs()).convert()
    write_atomically(path, flatbuffer)
    write_atomically(check, hashlib.sha256(flatbuffer).hexdigest().encode())
    return flatbuffer


class LiteRuntime:
    """A pool of LiteRT interpreters over one flatbuffer; each call borrows one, so `workers` calls overlap.

    Each interpreter uses every core (`threads`, default: the core count): a call alone is as fast as it can be,
    and two at once share the cores. Measured on 2 cores (benchmarks/fast_path.py), 2 interpreters x 2 threads
    nearly match 1 x 2 for one client's latency and 2 x 1 for eight clients' throughput.
    An interpreter is planned for one batch shape, so each pool slot keeps one per recent batch size."""

    def __init__(self, flatbuffer: bytes, workers: int = 1, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._make = functools.partial(
            Interpreter, model_content=flatbuffer, num_threads=threads or os.cpu_count() or 1
        )
        self._slots = queue.LifoQueue()
        for _ in range(workers):
            self._slots.put(OrderedDict())

    def _runner(self, slot, batch):
        if batch not in slot:
            with without_start_up_noise():  # LiteRT announces its XNNPACK delegate on stderr
                interpreter = self._make()
                index = interpreter.get_input_details()[0]["index"]
                interpreter.resize_tensor_input(index, [batch, *interpreter.get_input_details()[0]["shape"][1:]])
                interpreter.allocate_tensors()
                slot[batch] = interpreter.get_signature_runner()
            if len(slot) > 2:  # batch 1 and the latest batch size: bounded memory
                slot.popitem(last=False)
        slot.move_to_end(batch)
        return slot[batch]

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        """float32 (n, size, size, 3) -> [feature maps, embeddings, probabilities]."""
        slot = self._slots.get()
        try:
            out = self._runner(slot, len(images))(image=images)
        finally:
            self._slots.put(slot)
        return [out[f"output_{i}"] for i in range(3)]


class HeadRuntime:
    """A quick model (model.quick): its backbone's flatbuffer (or OpenVINO IR) gives the feature map and the
    embedding, and the model's own head, one dense sigmoid on the embedding, runs in numpy (the backbone's
    probabilities are dropped). So a quick model needs no conversion of its own: the backbone's is converted once and shared."""

    def __init__(self, body: Any, kernel: np.ndarray, bias: np.ndarray) -> None:
        self.body, self.kernel, self.bias = body, np.asarray(kernel, np.float32), np.asarray(bias, np.float32)

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        from scipy.special import expit  # the logistic function without overflow warnings

        features, embeddings, _ = self.body(images)
        logits = np.einsum("nd,dl->nl", embeddings, self.kernel) + self.bias  # einsum: no BLAS threads (atlas.py)
        return [features, embeddings, expit(logits).astype(np.float32)]


class KerasRuntime:
    """The same three outputs through a traced tf.function (the reference the tests compare with)."""

    def __init__(self, three_outputs: Any) -> None:
        import tensorflow as tf

        self._tf = tf
        self._fn = tf.function(lambda x: three_outputs(x, training=False), reduce_retracing=True)
        self._lock = threading.Lock()  # one call at a time: TensorFlow already uses every core for one

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            return [o.numpy() for o in self._fn(self._tf.constant(images, self._tf.float32))]


def choose_runtime(runtime="auto", precision="auto"):
    """(runtime, precision) that will serve: "auto" resolved as measured in docs/runtime.md; ValueError for a
    pair that cannot run (LiteRT and Keras run float32 only; bf16 and int8 need a CPU that has them)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if runtime == "auto":  # int8 misses the parity gate (docs/runtime.md): never chosen by itself
        from model.openvino_runtime import cpu_precisions

        if precision == "auto":
            return ("openvino", "bf16") if "bf16" in cpu_precisions() else ("litert", "f32")
        runtime = "litert" if precision == "f32" else "openvino"
    if runtime != "openvino":
        if precision not in ("auto", "f32"):
            raise ValueError(f"runtime {runtime} runs f32 only; --precision {precision} needs --runtime openvino")
        return runtime, "f32"
    from model.openvino_runtime import cpu_precisions

    if precision == "auto":
        return runtime, "bf16" if "bf16" in cpu_precisions() else "f32"
    if precision not in cpu_precisions():
        raise ValueError(f"this CPU has no {precision} instructions; use --precision f32")
    return runtime, precision


class Classifier:
    """A model directory loaded for use: `classify`, `analyse`, `activations` and what the pages describe."""

    HEADLINE = HEADLINE  # the metrics a summary shows, in order
    CONTRACT_SPLIT_SEED = CONTRACT_SPLIT_SEED  # the split seed of the contract split (card.split.seed)

    def __init__(
        self,
        model_dir: Path | str | None = None,
        runtime: str = "auto",
        workers: int | None = None,
        tta: str | None = None,
        precision: str = "auto",
    ) -> None:
        """`workers`: forward passes that may run at once (default DEFAULT_WORKERS; LiteRT interpreters or
        OpenVINO infer requests, each made when first needed). `tta`: None for the model directory's own setting,
        or "none" / "flip": with the thresholds tuned on validation for that mode when thresholds.json has them
        ("other_tta"), else with its own. `runtime`, `precision`: see choose_runtime; `self.runtime` and
        `self.precision` say what serves.

        The Keras model is loaded only when something needs it (see `model`): a server whose converted model is
        cached reads what it needs to know of the network from model.facts."""
        self.runtime, self.precision = choose_runtime(runtime, precision)
        self.info = read_model_dir(model_dir)
        self._model = None
        self._model_lock = threading.Lock()  # the Keras model is loaded once, by the first thread that needs it
        self._layers_preparing = False  # prepare_layer_browser has started its thread
        self.facts = cached_facts(self.info.sha256) or self._learn_facts()
        self.labels = list(self.info.labels)
        self.tta = tta or self.info.tta
        # The thresholds tuned for this TTA mode; a mode the directory has none for keeps its own (comparisons only).
        thresholds, self.at_least_one = self.info.operating_point(self.tta) or (
            self.info.thresholds,
            self.info.at_least_one,
        )
        # the one form everyone reads, rounded as the probabilities are (float32 carries noise: 0.3700000047)
        self.thresholds = {l: round(t, 4) for l, t in zip(self.labels, thresholds.tolist())}
        if self.facts.outputs != len(self.labels):
            raise ModelDirError(
                f"{self.info.path / 'model.keras'}: has {self.facts.outputs} outputs "
                f"but thresholds.json names {len(self.labels)} labels"
            )
        self.size = self.facts.size
        self._forward = self._runtime(workers)
        # Class maps: the dense kernel for a pooled head, the TF gradient for any other (made when first needed).
        self._cam_kernel = self.facts.kernel if self.facts.cam_head else None
        self._gradcam = None
        # "I don't know this photo": the training photos' embeddings and threshold, when the directory has them
        self.training_photos = TrainingPhotos.read(self.info.path)
        self._layer_model = functools.lru_cache(maxsize=8)(self._build_layer_model)  # bounded: about 4 MB a layer
        self._keras_lock = threading.Lock()  # the layer browser and gradient maps: one Keras call at a time

    @property
    def model(self) -> Any:
        """The Keras model, loaded on first use: by a conversion (the converted model not cached yet),
        runtime "keras", the layer browser, the gradient class maps of a head without a class-activation form."""
        with self._model_lock:
            if self._model is None:
                from model.cli import quiet_tensorflow

                quiet_tensorflow()  # TensorFlow imported without its start-up lines (unless the command is --verbose)
                self._model = self.info.load_keras()
            return self._model

    @property
    def keras_loaded(self) -> bool:
        """Whether the Keras model has been loaded (a server on a cached converted model never loads it)."""
        return self._model is not None

    def _learn_facts(self) -> NetworkFacts:
        """model.facts.NetworkFacts read from the Keras model (loading it), and cached for the next start."""
        facts = NetworkFacts.of(self.model)
        write_facts(self.info.sha256, facts)
        return facts

    def _three_outputs(self) -> Any:
        """The Keras model with the forward's three outputs, in this TTA mode (loads the Keras model)."""
        return with_outputs(self.model, self.tta)

    def _runtime(self, workers: int | None) -> Any:
        """The forward pass of self.runtime: OpenVINO, LiteRT (a quick model's through its backbone's flatbuffer
        when that is cached) or Keras."""
        if self.runtime == "keras":
            return KerasRuntime(self._three_outputs())
        workers = workers or DEFAULT_WORKERS
        backbone = self.card.training.extra.get("backbone_sha256")
        head = (self.facts.kernel, self.facts.bias)
        if self.runtime == "openvino":
            from model.openvino_runtime import OpenVinoRuntime, cached_ir, ir_path, load_openvino

            shared = backbone and self.tta == "none" and self.precision != "int8" and cached_ir(ir_path(backbone))
            if shared:  # a quick model runs its backbone's IR, as it runs its flatbuffer on LiteRT
                return HeadRuntime(OpenVinoRuntime(shared, self.precision, workers), *head)
            return load_openvino(self._three_outputs, self.info.sha256, self.tta, self.precision, workers)
        shared = backbone and self.tta == "none" and cached_flatbuffer(backbone)
        if shared:
            return HeadRuntime(LiteRuntime(shared, workers), *head)
        return LiteRuntime(litert_flatbuffer(self._three_outputs, self.info.sha256, self.tta), workers)

    # --- metadata the pages and the API show ---------------------------------------------
    @property
    def card(self) -> ModelCard:
        """The model card: thresholds.json and metrics.json, typed (model.modeldir.ModelCard)."""
        return self.info.card

    @property
    def name(self) -> str:
        return self.info.path.name

    def training_curve_png(self) -> bytes | None:
        """The model directory's training_curve.png as bytes, or None when it has none."""
        path = self.info.path / "training_curve.png"
        return path.read_bytes() if path.is_file() else None

    def test_predictions(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(image names, true 0/1 labels, probabilities) stored at training for the test split."""
        return self.info.test_predictions()

    def dataset(self, path: Path | str) -> Dataset:
        """The dataset in `path` (model.data.Dataset); raises model.data.DataError."""
        return load_dataset(path)

    def atlas(self, dataset: Dataset, folder: Path | None = None) -> Atlas:
        """model.atlas.Atlas of `dataset` (a Dataset) under this model, not started: embeddings,
        probabilities and map of every photo, cached in `folder` (default: <cache dir>/atlas)."""
        return Atlas(self, dataset, folder)

    # --- the model as a download (model/bundle.py) ---------------------------------------------
    def _bundle_parts(self):
        """(IR path, flatbuffer, labels.json contents): this model in the TTA mode and thresholds it serves with."""
        from model.bundle import labels_json
        from model.openvino_runtime import openvino_ir

        meta = labels_json(self.labels, self.thresholds, self.at_least_one, self.size, self.tta)
        sha, tta = self.info.sha256, self.tta
        three = self._three_outputs  # called only for what is not cached yet
        return openvino_ir(three, sha, tta), litert_flatbuffer(three, sha, tta), meta

    def write_bundle(self, folder):
        """The download's files (OpenVINO IR, TFLite, labels.json, README.md, predict.py) into `folder`."""
        from model.bundle import write_bundle

        return write_bundle(folder, self.name, *self._bundle_parts())

    def bundle_zip(self):
        """Path of the download as a ZIP, built once per model file, TTA mode and thresholds, then cached."""
        from model.bundle import VERSION, bundle_zip

        key = json.dumps([VERSION, self.name, self.info.sha256, self.tta, self.thresholds, self.at_least_one])
        path = cache_dir() / "bundle" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.zip"
        return path if path.is_file() else bundle_zip(path, f"miml-scenes-{self.name}", *self._bundle_parts())

    def warm_up(self) -> None:
        """One forward pass on a grey photo, so that a first request does not wait for LiteRT's planning or
        OpenVINO's compiling; when the Keras model is loaded anyway, also one layer of the layer browser (its
        TensorFlow tracing). A model served from its cached converted form is not loaded for that: the layer
        browser's first request loads it."""
        grey = np.full((1, self.size, self.size, 3), 128, np.uint8)
        self.forward(grey)
        spatial = [name for name, _, is_spatial in self.layers() if is_spatial]
        if spatial and self.keras_loaded:
            self.activations(grey[0], spatial[-1])

    # --- decisions ---------------------------------------------------------------------
    def decide(self, probs: np.ndarray, unfamiliar: Sequence[bool] | None = None) -> np.ndarray:
        """0/1 predictions under the model's tuned thresholds; the at-least-one rule forces no label on a photo
        flagged in `unfamiliar` (a bool per row)."""
        probs = np.atleast_2d(probs)
        thresholds = [self.thresholds[l] for l in self.labels]
        decided = apply_thresholds(probs, thresholds, self.at_least_one)
        if self.at_least_one and unfamiliar is not None and np.any(unfamiliar):
            decided[np.asarray(unfamiliar)] = apply_thresholds(probs[np.asarray(unfamiliar)], thresholds)
        return decided

    def familiarity(self, embeddings: np.ndarray) -> list[Familiarity | None]:
        """[model.familiarity.Familiarity] for (n, d) embeddings, or [None] * n when the model has no training
        photos' embeddings (a model directory without familiarity.npz, or with one written for another network:
        a model.keras replaced by hand, whose embedding has another width)."""
        embeddings = np.atleast_2d(embeddings)
        if self.training_photos is None or embeddings.shape[-1] != self.training_photos.basis.shape[0]:
            return [None] * len(embeddings)
        return self.training_photos.judge(embeddings)

    def evaluate(self, truth: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        """model.metrics.evaluate under this model's thresholds."""
        return evaluate(truth, probs, [self.thresholds[l] for l in self.labels], self.labels, self.at_least_one)

    def results(self, probs: np.ndarray, embeddings: np.ndarray | None = None) -> list[dict[str, Any]]:
        """(n, labels) probabilities -> [{'probabilities': {label: p}, 'predicted': [labels]}], one a photo;
        with the photos' (n, d) `embeddings`, each also has 'familiarity': {'score', 'unfamiliar'} (None when
        the model directory has no familiarity.npz)."""
        probs = np.atleast_2d(probs)
        known = None if embeddings is None else self.familiarity(embeddings)
        unfamiliar = None if known is None else [bool(f and f.unfamiliar) for f in known]
        out = [
            {
                "probabilities": {l: round(float(p), 4) for l, p in zip(self.labels, row)},
                "predicted": [l for l, on in zip(self.labels, flags) if on],
            }
            for row, flags in zip(probs, self.decide(probs, unfamiliar))
        ]
        for result, f in zip(out, known or []):
            result["familiarity"] = f and f.as_dict()
        return out

    # --- photos --------------------------------------------------------------------------
    def load(self, source: ImageSource) -> np.ndarray:
        """Bytes, path or file object -> the model's input array; raises ImageError."""
        return load_image(source, self.size)

    def decoded_pixels(self, source: ImageSource) -> int:
        """Pixels `analyse` and `load` will decode for this photo, from its header alone; raises ImageError."""
        return decoded_pixels(source, self.size)

    def display_image(self, source: ImageSource, size: int = DISPLAY_SIZE) -> Any:
        """The upright photo letterboxed to `size` (thumbnails, display copies); raises ImageError."""
        return letterbox(decode(source, size), size)

    # --- forward passes ------------------------------------------------------------------
    def forward(self, images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
        """(n, size, size, 3) uint8 -> (feature maps, embeddings, probabilities), one pass."""
        return self._forward(np.asarray(images, dtype=np.float32))

    def _batched(
        self, images: np.ndarray | Sequence[np.ndarray], batch_size: int, outputs: Sequence[int]
    ) -> list[np.ndarray]:
        """The forward's outputs numbered in `outputs` for any number of images, `batch_size` photos a pass."""
        images = np.asarray(images)  # a list of arrays would be converted once per pass otherwise
        if len(images) == 0:
            empty = self.forward(np.zeros((1, self.size, self.size, 3), np.uint8))
            return [empty[o][:0] for o in outputs]
        # Only the asked-for outputs of each pass are kept: the feature maps are 0.5 MB a photo (the ensemble's
        # 7 x 7 x 2560), 640 MB for the 1280 training photos whose embeddings model.retune wants.
        passes = [
            [out[o] for o in outputs]
            for out in (self.forward(images[i : i + batch_size]) for i in range(0, len(images), batch_size))
        ]
        return [np.concatenate(column) for column in zip(*passes)]

    def probabilities(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(n, size, size, 3) uint8, or a list of n images -> (n, labels) probabilities."""
        return self._batched(images, batch_size, (2,))[0]

    def embeddings(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(n, size, size, 3) uint8, or a list of n images -> (n, d) pooled embeddings."""
        return self._batched(images, batch_size, (1,))[0]

    def probabilities_and_embeddings(
        self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 32
    ) -> list[np.ndarray]:
        """((n, labels) probabilities, (n, d) embeddings) from one pass over the images."""
        return self._batched(images, batch_size, (2, 1))

    def classify(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 32) -> list[dict[str, Any]]:
        """results() for each image (model-input arrays), with its familiarity."""
        return self.results(*self.probabilities_and_embeddings(images, batch_size))

    def class_maps(self, pixels: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """(labels, h, w) maps in 0..1 for one model input; `features` from its forward pass when known."""
        if self._cam_kernel is None:  # gradients of the plain pass; with flip TTA, the mean with the mirror's
            with self._keras_lock:
                if self._gradcam is None:
                    self._gradcam = self._gradcam_function(with_outputs(self.model))
                cams = self._gradcam(np.asarray(pixels, np.float32)).numpy()
                if self.tta == "flip":
                    cams = (cams + self._gradcam(np.asarray(pixels[:, ::-1], np.float32)).numpy()[:, :, ::-1]) / 2
        else:
            if features is None:
                features = self.forward(pixels[None])[0]
            cams = np.maximum(np.einsum("hwc,cl->lhw", features[0], self._cam_kernel), 0)
        return cams / np.maximum(cams.max(axis=(1, 2), keepdims=True), 1e-12)

    def analyse(self, source: ImageSource, display_size: int = DISPLAY_SIZE) -> Analysis:
        """One photo (bytes, path or file object) -> Analysis: decoded once, one forward pass; raises ImageError."""
        upright = decode(source, self.size)
        pixels = np.asarray(letterbox(upright, self.size), dtype=np.uint8)
        features, embedding, probs = self.forward(pixels[None])
        result = self.results(probs, embedding)[0]
        return Analysis(
            image=letterbox(upright, min(display_size, max(upright.size))),
            size=upright.size,
            pixels=pixels,
            probabilities=result["probabilities"],
            predicted=result["predicted"],
            cams=dict(zip(self.labels, self.class_maps(pixels, features))),
            embedding=embedding[0],
            familiarity=self.familiarity(embedding)[0],
        )

    def _gradcam_function(self, three):
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def gradcam(image):
            with tf.GradientTape() as tape:
                features, _, probs = three(image[None], training=False)
                scores = probs[0]
            # One gradient per label, d p_label / d features, in a single vectorised jacobian.
            grads = tape.jacobian(scores, features)[:, 0]  # (labels, h, w, channels)
            weights = tf.reduce_mean(grads, axis=(1, 2))  # (labels, channels)
            cams = tf.nn.relu(tf.einsum("hwc,lc->lhw", features[0], weights))
            return cams / tf.maximum(tf.reduce_max(cams, axis=(1, 2), keepdims=True), 1e-12)

        return gradcam

    # --- the layer browser (Keras) -------------------------------------------------------------
    def layers(self) -> list[tuple[str, tuple, bool]]:
        """[(name, output shape, is convolutional)] for every layer after the input (from model.facts: the Keras
        model is not loaded for it)."""
        return list(self.facts.layers)

    def _build_layer_model(self, layer_name):
        full = self.model  # loaded first: TensorFlow imported quietly
        import keras
        import tensorflow as tf

        model = keras.Model(full.inputs, full.get_layer(layer_name).output)
        return tf.function(lambda x: model(x, training=False))

    def prepare_layer_browser(self) -> None:
        """Get the layer browser ready in a background thread, once: the Keras model loaded (TensorFlow imported)
        and its last convolutional layer traced. A page that offers the browser calls this, so that its first click
        on a layer need not wait for that (7 s for the shipped ensemble) while a server that only answers the API
        never loads Keras."""
        spatial = [name for name, _, is_spatial in self.layers() if is_spatial]
        with self._model_lock:
            if self._model is not None or self._layers_preparing or not spatial:
                return
            self._layers_preparing = True

        def prepare():
            try:
                self.activations(np.full((self.size, self.size, 3), 128, np.uint8), spatial[-1])
            except Exception:  # a damaged model.keras: the browser's own request reports it, as before
                pass

        threading.Thread(target=prepare, name="prepare-layer-browser", daemon=True).start()

    def activations(self, image: np.ndarray, layer_name: str) -> np.ndarray:
        """Output of `layer_name` for one image: (h, w, channels). Raises KeyError for an unknown layer.
        The first call loads the Keras model (unless something already has)."""
        if layer_name not in self.facts.layer_names:
            raise KeyError(layer_name)
        with self._keras_lock:
            layer_model = self._layer_model(layer_name)  # the Keras model and TensorFlow loaded first, quietly
            import tensorflow as tf

            return layer_model(tf.constant(image[None], tf.float32))[0].numpy()
