"""Read a legacy (non-zip) `torch.save` state dict with the standard library and numpy.

The legacy format is a run of pickles: a magic number, a protocol version, system
info, the state dict itself (tensors refer to storages through persistent ids),
then the list of storage keys, then each storage's raw bytes preceded by its
element count. No torch import, and no arbitrary classes: the unpickler allows
only the handful of globals a state dict needs.
"""
import collections
import hashlib
import pickle
import struct

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
}


class WeightsFileError(Exception):
    """The weights file is missing, altered or not a legacy state dict."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _TensorRef:
    """A tensor still waiting for its storage's bytes."""

    def __init__(self, storage_key, offset, shape, stride):
        self.storage_key, self.offset, self.shape, self.stride = storage_key, offset, shape, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.storage_dtypes = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return name
        raise WeightsFileError(f"unexpected object {module}.{name} in the weights file")

    def persistent_load(self, pid):
        kind, storage_type, key = pid[0], pid[1], pid[2]
        if kind != "storage":
            raise WeightsFileError(f"unexpected persistent id {kind!r}")
        self.storage_dtypes[key] = _DTYPES[storage_type]
        return key


def load_state_dict(path, sha256=None):
    """Return {name: numpy array} from a legacy torch.save file, checking sha256 first."""
    try:
        if sha256 is not None and sha256_of(path) != sha256:
            raise WeightsFileError(f"{path}: sha256 mismatch (expected {sha256}); the file is altered or not the right one")
        with open(path, "rb") as f:
            header = [pickle.load(f) for _ in range(3)]
            if header[0] != LEGACY_MAGIC:
                raise WeightsFileError(f"{path}: not a legacy torch.save file")
            unpickler = _StateDictUnpickler(f)
            refs = unpickler.load()
            storage_keys = pickle.load(f)
            storages = {}
            for key in storage_keys:
                dtype = np.dtype(unpickler.storage_dtypes[key])
                (count,) = struct.unpack("<q", f.read(8))
                storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
    except (OSError, pickle.UnpicklingError, EOFError, struct.error) as e:
        raise WeightsFileError(f"{path}: cannot read weights ({e})") from None
    state = {}
    for name, ref in refs.items():
        flat = storages[ref.storage_key]
        strides = tuple(s * flat.itemsize for s in ref.stride)
        view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.shape, strides=strides)
        state[name] = np.array(view)
    return state
