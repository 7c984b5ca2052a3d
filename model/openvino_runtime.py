"""OpenVINO on the CPU: the same three outputs as the LiteRT flatbuffer, in bf16 where the CPU has it.

The IR (OpenVINO's .xml + .bin) is converted once per model file and TTA mode from a Keras
`tf_saved_model` export (`openvino.convert_model`, float32 weights kept) and cached beside the LiteRT
flatbuffer, keyed by the model's sha256, with its own sha256 checked before use. Each batch size is
compiled once (a static shape plans the fastest kernels) with OpenVINO's compile cache (`CACHE_DIR`, one
folder per model), so a second start-up loads the compiled kernels instead of compiling them again.

Precisions: "f32" (exact: the same decisions as Keras), "bf16" (AMX / AVX-512 bf16: about 2x faster here,
inside the parity gate, see docs/runtime.md) and "int8" (an IR quantized by `python -m model.quantize`).
"""

import contextlib
import functools
import hashlib
import io
import os
import queue
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from model.cache import cache_dir
from model.modeldir import ModelDirError, write_atomically

PRECISIONS = ("f32", "bf16", "int8")
STREAMS = 1  # CPU streams a compiled model splits its threads into: 1 measured best (benchmarks/openvino_layout.py)


@functools.cache
def cpu_precisions():
    """The precisions this CPU runs natively, of PRECISIONS ("bf16" needs AVX-512 bf16 or AMX; "int8" VNNI)."""
    import openvino as ov

    capabilities = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return tuple(p for p in PRECISIONS if p == "f32" or p.upper() in capabilities)


def ir_folder():
    return cache_dir() / "openvino"


def ir_path(model_sha256, tta="none", precision="f32"):
    """Where the IR of a model file is cached: `<sha256>[-flip][-int8].xml` (and .bin)."""
    suffix = ("" if tta == "none" else "-" + tta) + ("-int8" if precision == "int8" else "")
    return ir_folder() / f"{model_sha256}{suffix}.xml"


def _digest(xml):
    return hashlib.sha256(xml.read_bytes() + xml.with_suffix(".bin").read_bytes()).hexdigest()


def cached_ir(xml):
    """`xml` if it and its .bin are whole (their sha256 matches the one written with them), else None."""
    try:
        return xml if _digest(xml) == xml.with_suffix(".sha256").read_text().strip() else None
    except OSError:
        return None


def save_ir(ov_model, xml):
    """Write an openvino.Model as `xml` + .bin + .sha256, each atomically (float32 weights kept as they are)."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        ov.save_model(ov_model, Path(tmp) / "m.xml", compress_to_fp16=False)
        for suffix in (".bin", ".xml"):
            write_atomically(xml.with_suffix(suffix), (Path(tmp) / "m").with_suffix(suffix).read_bytes())
    write_atomically(xml.with_suffix(".sha256"), _digest(xml).encode())
    return xml


def openvino_ir(three_outputs, model_sha256, tta="none"):
    """The path of the float32 IR of the Keras model `three_outputs()` gives (called only when nothing is cached),
    converted once per model file and cached."""
    xml = ir_path(model_sha256, tta)
    if cached_ir(xml):
        return xml
    import openvino as ov

    with tempfile.TemporaryDirectory() as saved:
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints its export's signature
            three_outputs().export(saved, format="tf_saved_model")
        return save_ir(ov.convert_model(saved), xml)


class OpenVinoRuntime:
    """Compiled models of one IR, one a batch size (batch 1 and the latest other); `workers` infer requests
    each, borrowed by a call so that that many calls overlap. Each uses `threads` cores (default: all)."""

    def __init__(self, xml, precision="f32", workers=1, threads=None):
        import openvino as ov

        self._core, self._xml = ov.Core(), xml  # the IR is read for each compile: its weights are not kept twice
        self._config = {
            "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1,
            "NUM_STREAMS": STREAMS,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",  # an int8 IR keeps its int8 ops
            "CACHE_DIR": str(Path(xml).with_suffix("")) + "-compiled",  # keyed by the model's sha256, as the IR
        }
        self.precision = precision
        self._compiled = OrderedDict()  # batch size -> compiled model
        self._lock = threading.Lock()
        self._slots = queue.LifoQueue()
        for _ in range(workers):
            self._slots.put({})

    def _compiled_for(self, batch):
        with self._lock:
            if batch not in self._compiled:
                model = self._core.read_model(self._xml)
                model.reshape([batch, *(d.get_length() for d in model.inputs[0].get_partial_shape()[1:])])
                self._compiled[batch] = self._core.compile_model(model, "CPU", self._config)
                if len(self._compiled) > 2:  # batch 1 and the latest batch size: bounded memory
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(batch)
            return self._compiled[batch]

    def __call__(self, images):
        """float32 (n, size, size, 3) -> [feature maps, embeddings, probabilities]."""
        compiled = self._compiled_for(len(images))
        slot = self._slots.get()
        try:
            if slot.get(len(images), (None,))[0] is not compiled:
                for gone in [b for b, (c, _) in slot.items() if c is not self._compiled.get(b)]:
                    del slot[gone]  # requests of compiled models dropped above
                slot[len(images)] = (compiled, compiled.create_infer_request())
            out = slot[len(images)][1].infer({0: images})
        finally:
            self._slots.put(slot)
        return [out[i] for i in range(3)]


def load_openvino(three_outputs, model_sha256, tta="none", precision="f32", workers=1):
    """An OpenVinoRuntime for a model: its float32 IR, or for "int8" the quantized IR made by model.quantize.
    `three_outputs()` gives the Keras model to convert, called only when its IR is not cached."""
    if precision == "int8":
        xml = cached_ir(ir_path(model_sha256, tta, "int8"))
        if xml is None:
            raise ModelDirError(
                "no int8 model for this model file yet: make it with python -m model.quantize --model DIR (needs nncf)"
            )
    else:
        xml = openvino_ir(three_outputs, model_sha256, tta)
    return OpenVinoRuntime(xml, precision, workers)
