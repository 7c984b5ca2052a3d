"""Read a legacy (non-zip) `torch.save` state dict with the standard library and numpy.

The legacy format is a run of pickles: a magic number, a protocol version, system
info, the state dict itself (tensors refer to storages through persistent ids),
then the list of storage keys, then each storage's raw bytes preceded by its
element count. No torch import, and no arbitrary classes: every pickle goes through
an unpickler that allows only the handful of globals a state dict needs, the sha256 is
required, and each tensor's offset, shape and stride are checked against its storage.
"""

import collections
import hashlib
import os
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


class _Unpickler(pickle.Unpickler):
    """Builds plain data, OrderedDicts and tensor references, nothing else: every other global is refused.

    Storages (persistent ids) are accepted only where `storage_dtypes` is a dict: in the state dict."""

    def __init__(self, f, storage_dtypes=None):
        super().__init__(f)
        self.storage_dtypes = storage_dtypes

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return name
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")

    def persistent_load(self, pid):
        if (
            self.storage_dtypes is None
            or not isinstance(pid, tuple)
            or len(pid) < 3
            or pid[0] != "storage"
            or pid[1] not in _DTYPES
            or not isinstance(pid[2], str)
        ):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        self.storage_dtypes[pid[2]] = np.dtype(_DTYPES[pid[1]])
        return pid[2]


def _is_index_tuple(values):
    return isinstance(values, tuple) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def _tensor(name, ref, storages):
    """The array `ref` describes, after checking that its offset, shape and stride stay inside its storage."""
    if not isinstance(ref, _TensorRef) or ref.storage_key not in storages:
        raise ValueError(f"{name!r} is not a tensor with a stored storage")
    flat = storages[ref.storage_key]
    if not (
        _is_index_tuple((ref.offset,))
        and _is_index_tuple(ref.shape)
        and _is_index_tuple(ref.stride)
        and len(ref.shape) == len(ref.stride)
    ):
        raise ValueError(f"tensor {name!r}: malformed offset, shape or stride")
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if 0 not in ref.shape and last >= flat.size:
        raise ValueError(f"tensor {name!r}: reaches element {last} of a storage of {flat.size}")
    strides = tuple(s * flat.itemsize for s in ref.stride)
    return np.array(np.lib.stride_tricks.as_strided(flat[ref.offset :], shape=ref.shape, strides=strides))


def load_state_dict(path, sha256):
    """Return {name: numpy array} from a legacy torch.save file, after checking its sha256.

    Raises WeightsFileError, naming the file, for a wrong checksum or anything malformed."""
    try:
        if sha256_of(path) != sha256:
            raise WeightsFileError(
                f"{path}: sha256 mismatch (expected {sha256}); the file is altered or not the right one"
            )
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = [_Unpickler(f).load() for _ in range(3)]
            if header[0] != LEGACY_MAGIC:
                raise WeightsFileError(f"{path}: not a legacy torch.save file")
            dtypes = {}
            refs = _Unpickler(f, dtypes).load()
            keys = _Unpickler(f).load()
            if not isinstance(refs, dict) or not isinstance(keys, list) or set(keys) != set(dtypes):
                raise ValueError("the state dict and its storage keys do not match")
            storages = {}
            for key in keys:
                (count,) = struct.unpack("<q", f.read(8))
                if not 0 <= count * dtypes[key].itemsize <= size - f.tell():
                    raise ValueError(f"storage {key!r} claims {count} elements, more than the file holds")
                storages[key] = np.frombuffer(f.read(count * dtypes[key].itemsize), dtype=dtypes[key])
            return {name: _tensor(name, ref, storages) for name, ref in refs.items()}
    except WeightsFileError:
        raise
    except (
        OSError,
        pickle.UnpicklingError,
        EOFError,
        struct.error,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        RecursionError,
        MemoryError,
    ) as e:
        raise WeightsFileError(f"{path}: cannot read weights ({e})") from None
