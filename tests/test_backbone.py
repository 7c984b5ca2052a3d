import collections
import os
import pickle
import pickletools
import struct
import sys
import types

import numpy as np
import pytest

from model.backbones.efficientnet_lite import VARIANTS, imagenet_classifier, imagenet_weights
from model.backbones.torch_legacy import LEGACY_MAGIC, WeightsFileError, load_state_dict, sha256_of

# ImageNet classes of natural scenes: 970 alp ... 980 volcano
SCENE_CLASSES = {
    970: "alp",
    972: "cliff",
    973: "coral reef",
    975: "lakeside",
    976: "promontory",
    977: "sandbar",
    978: "seashore",
    979: "valley",
    980: "volcano",
}


def write_legacy_state_dict(path, arrays, monkeypatch):
    """Write a file in torch's legacy format the way torch.save does, without torch."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"

    def _rebuild_tensor_v2(*args):
        pass

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Storage:
        def __init__(self, key, data):
            self.key, self.data = key, data

    class Tensor:
        def __init__(self, storage, shape, stride):
            self.storage, self.shape, self.stride = storage, shape, stride

        def __reduce__(self):
            return _rebuild_tensor_v2, (self.storage, 0, self.shape, self.stride, False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.data.size, None)
            return None

    storages, state = [], collections.OrderedDict()
    for i, (name, (flat, shape, stride)) in enumerate(arrays.items()):
        storages.append(Storage(str(1000 + i), np.asarray(flat, np.float32)))
        state[name] = Tensor(storages[-1], shape, stride)
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(state)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.data.size) + s.data.tobytes())


def test_legacy_reader_restores_shapes_strides_and_values(tmp_path, monkeypatch):
    conv = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    base = np.arange(6, dtype=np.float32)  # stored as 2x3, read as its 3x2 transpose through strides
    path = tmp_path / "w.pth"
    write_legacy_state_dict(
        path,
        {"conv.weight": (conv.ravel(), (2, 3, 2, 2), (12, 4, 2, 1)), "fc.weight": (base, (3, 2), (1, 3))},
        monkeypatch,
    )
    state = load_state_dict(path, sha256=sha256_of(path))
    assert np.array_equal(state["conv.weight"], conv)
    assert np.array_equal(state["fc.weight"], base.reshape(2, 3).T)


def test_sha256_mismatch_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    write_legacy_state_dict(path, {"a": (np.ones(3), (3,), (1,))}, monkeypatch)
    with pytest.raises(WeightsFileError, match="sha256 mismatch"):
        load_state_dict(path, sha256="0" * 64)


class Payload:
    """Unpickled by a plain pickle.load, this runs a shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("position", ["magic number", "state dict", "storage keys"])
def test_pickled_code_is_refused_in_every_pickle(tmp_path, monkeypatch, position):
    path, marker = tmp_path / "evil.pth", tmp_path / "ran"
    write_legacy_state_dict(path, {"a": (np.ones(3), (3,), (1,))}, monkeypatch)
    pickles = split_pickles(path.read_bytes())
    index = {"magic number": 0, "state dict": 3, "storage keys": 4}[position]
    pickles[index] = pickle.dumps(Payload(f"touch {marker}"), protocol=2)
    path.write_bytes(b"".join(pickles))
    with pytest.raises(
        WeightsFileError, match=r"evil\.pth: cannot read weights \(unexpected object (posix|nt)\.system\)"
    ):
        load_state_dict(path, sha256=sha256_of(path))  # the checksum of a crafted file proves nothing
    assert not marker.exists()


def split_pickles(data):
    """The file's five pickles, then the storages' bytes as one last piece."""
    import io

    f, pieces = io.BytesIO(data), []
    for _ in range(5):
        start = f.tell()
        for _op, _arg, _pos in pickletools.genops(f):
            pass
        pieces.append(data[start : f.tell()])
    return pieces + [data[f.tell() :]]


@pytest.mark.parametrize("shape, stride, reach", [((3,), (5,), 10), ((4,), (1,), 3), ((2, 2), (2, 1), 3)])
def test_tensor_outside_its_storage_is_refused(tmp_path, monkeypatch, shape, stride, reach):
    path = tmp_path / "w.pth"
    write_legacy_state_dict(path, {"a": (np.ones(3), shape, stride)}, monkeypatch)
    with pytest.raises(WeightsFileError, match=f"w.pth: .*tensor 'a': reaches element {reach} of a storage of 3"):
        load_state_dict(path, sha256=sha256_of(path))


def test_storage_longer_than_the_file_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    write_legacy_state_dict(path, {"a": (np.ones(3), (3,), (1,))}, monkeypatch)
    data = path.read_bytes()
    path.write_bytes(data[: -4 * 3 - 8] + struct.pack("<q", 1 << 60) + data[-4 * 3 :])
    with pytest.raises(WeightsFileError, match="claims 1152921504606846976 elements, more than the file holds"):
        load_state_dict(path, sha256=sha256_of(path))


def test_converted_weights_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MIML_CACHE", str(tmp_path))
    first = imagenet_weights("lite0")
    cached = list(tmp_path.glob("efficientnet-lite0-*.npz"))
    assert len(cached) == 1
    second = imagenet_weights("lite0")
    assert first.keys() == second.keys()
    assert all(np.array_equal(a, b) for k in first for a, b in zip(first[k], second[k]))
    assert first["stem_conv"][0].shape == (3, 3, 3, 32)  # torch (out, in, h, w) -> keras (h, w, in, out)
    assert first["block01_dw_conv"][0].shape == (3, 3, 96, 1)


def scene_photos(miml_data, column, n):
    import csv

    rows = list(csv.DictReader(open(miml_data / "labels.csv")))
    return [miml_data / "original" / r["image"] for r in rows if r[column] == "1"][:n]


@pytest.mark.needs_data
def test_imagenet_head_sees_scenes_in_miml_photos(miml_data):
    from model.preprocess import load_image

    model = imagenet_classifier("lite0")
    size = VARIANTS["lite0"]["size"]
    for column in ("sea", "mountains"):
        photos = scene_photos(miml_data, column, 20)
        logits = np.asarray(model.predict_on_batch(np.stack([load_image(p, size) for p in photos]).astype("float32")))
        top5 = np.argsort(-logits, axis=1)[:, :5]
        hits = np.mean([bool(set(row) & set(SCENE_CLASSES)) for row in top5])
        assert hits >= 0.7, f"only {hits:.0%} of {column} photos have a scene class in their ImageNet top 5"


@pytest.mark.slow  # two backbones on 300 photos at 224 pixels
@pytest.mark.needs_data
def test_pretrained_features_beat_random_backbone(miml_data):
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.multiclass import OneVsRestClassifier
    from model.data import load_dataset
    from model.network import build_efficientnet

    ds = load_dataset(miml_data)
    idx = np.random.default_rng(0).choice(len(ds.images), 300, replace=False)
    x, y = ds.load_photos(idx, 224), ds.labels[idx]
    scores = {}
    for pretrained in (True, False):
        keras.utils.set_random_seed(0)
        net = build_efficientnet(ds.label_names, pretrained=pretrained)
        pooled = keras.Model(net.inputs, net.get_layer("pool").output)
        # 30 photos a call: 300 at once held 3 GB of activations
        features = np.concatenate([pooled.predict_on_batch(x[i : i + 30].astype("float32")) for i in range(0, 300, 30)])
        clf = OneVsRestClassifier(LogisticRegression(C=0.1, max_iter=2000)).fit(features[:200], y[:200])
        scores[pretrained] = average_precision_score(y[200:], clf.predict_proba(features[200:]), average="macro")
    assert scores[True] > 0.85 and scores[True] > scores[False] + 0.25, scores
