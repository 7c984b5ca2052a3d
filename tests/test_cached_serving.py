"""A model whose converted form (OpenVINO IR or LiteRT flatbuffer) is cached serves without loading its Keras model:
the network's facts (model/facts.py) stand in for it, and the Keras model loads only when something needs it (the
layer browser). The server then never imports TensorFlow."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from model.cache import cache_dir
from model.cli import START_UP_NOISE
from model.facts import NetworkFacts, cached_facts, facts_path
from model.inference import Classifier, ModelDirError
from model.modeldir import SHIPPED_MODEL_DIR
from tests.helpers import ROOT, free_port, start


@pytest.fixture(scope="module")
def cached():
    """The shipped model as the app serves it, its converted model and facts cached: the first Classifier converts
    and learns them where this machine has not yet (a fresh clone), the second finds them."""
    Classifier()
    return Classifier()


def cache_without_facts(folder):
    """`folder` as a cache that shares this machine's converted models but has no network facts."""
    for kind in ("openvino", "litert"):
        if (cache_dir() / kind).is_dir():
            (folder / kind).symlink_to(cache_dir() / kind)
    return folder


@pytest.fixture(scope="module")
def relearned(cached, tmp_path_factory):
    """The same model in a cache that shares the converted models but whose facts file is damaged (half of it):
    its facts read as none, so this Classifier loads the Keras model and learns them again."""
    folder = cache_without_facts(tmp_path_factory.mktemp("cache"))
    facts = facts_path(cached.info.sha256).read_bytes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIML_CACHE", str(folder))
        facts_path(cached.info.sha256).parent.mkdir()
        facts_path(cached.info.sha256).write_bytes(facts[: len(facts) // 2])
        relearned = Classifier()
        yield relearned, cached_facts(cached.info.sha256)


@pytest.mark.needs_data
def test_a_cached_model_serves_without_keras_as_the_keras_loaded_one(cached, relearned, sea_photo, desert_photo):
    relearned, rewritten = relearned
    assert not cached.keras_loaded and relearned.keras_loaded
    assert (cached.runtime, cached.precision, cached.size) == (relearned.runtime, relearned.precision, 224)
    for photo in (sea_photo, desert_photo):
        ours, theirs = cached.analyse(photo), relearned.analyse(photo)
        assert ours.probabilities == theirs.probabilities and ours.predicted == theirs.predicted
        assert ours.cams.keys() == theirs.cams.keys() == set(cached.labels)
        for label in cached.labels:
            np.testing.assert_array_equal(ours.cams[label], theirs.cams[label])
        assert max(m.max() for m in ours.cams.values()) == 1.0  # a real map, normalised per label
    pixels = np.stack([cached.load(sea_photo), cached.load(desert_photo)])
    assert cached.classify(pixels) == relearned.classify(pixels)
    assert cached.layers() == relearned.layers() and len(cached.layers()) > 300  # the ensemble's, for /model
    assert not cached.keras_loaded
    # the damaged facts were replaced by the Keras model's own
    probabilities = relearned.model.get_layer("probabilities")
    np.testing.assert_array_equal(rewritten.kernel, probabilities.kernel.numpy())
    np.testing.assert_array_equal(rewritten.bias, probabilities.bias.numpy())
    assert rewritten.to_bytes() == NetworkFacts.of(relearned.model).to_bytes() == cached.facts.to_bytes()


@pytest.mark.needs_data
def test_the_layer_browser_loads_the_keras_model_on_demand(cached, sea_photo):
    pixels = cached.load(sea_photo)
    with pytest.raises(KeyError):
        cached.activations(pixels, "no_such_layer")  # told from the facts, nothing loaded
    assert not cached.keras_loaded
    name, shape, spatial = next(layer for layer in cached.layers() if layer[0].endswith("stem_activation"))
    maps = cached.activations(pixels, name)
    assert cached.keras_loaded and spatial and maps.shape == shape == (112, 112, 32)
    assert maps.min() >= 0 and maps.max() > 0  # ReLU6 activations of a real photo


@pytest.mark.needs_data
def test_a_photo_page_gets_the_layer_browser_ready_in_the_background(cached, miml_data, sea_photo):
    """The detail page offers the layer browser: opening it starts loading the Keras model (once), so that the first
    click on a layer does not wait for TensorFlow; a prediction alone never loads it."""
    from app import create_app
    from app.scenes import Scenes

    client = create_app(scenes=Scenes(data_dir=miml_data)).test_client()
    classifier = client.application.extensions["scenes"].classifier
    photo = client.application.extensions["scenes"].test_photos[0].photo_id
    assert client.post("/api/predict", data={"image": (io.BytesIO(sea_photo), "sea.jpg")}).status_code == 200
    assert not classifier.keras_loaded
    assert client.get(f"/photo/{photo}").status_code == 200
    client.get(f"/photo/{photo}")  # a second view starts nothing more
    assert [t.name for t in threading.enumerate()].count("prepare-layer-browser") <= 1
    deadline = time.monotonic() + 120
    while not classifier.keras_loaded and time.monotonic() < deadline:
        time.sleep(0.1)
    assert classifier.keras_loaded
    r = client.get(f"/photo/{photo}?layer=m1_stem_activation")
    assert r.status_code == 200 and "of 32 channels" in r.get_data(as_text=True)


def test_the_label_count_check_holds_when_served_from_the_cache(cached, tmp_path):
    """The network's outputs come from the cached facts: a thresholds.json naming fewer labels is still refused."""
    folder = tmp_path / "four"
    shutil.copytree(SHIPPED_MODEL_DIR, folder)
    info = json.loads((folder / "thresholds.json").read_text())
    info["labels"] = info["labels"][:4]
    info["thresholds"] = {l: info["thresholds"][l] for l in info["labels"]}
    del info["other_tta"]
    (folder / "thresholds.json").write_text(json.dumps(info))
    assert cached_facts(cached.info.sha256) is not None
    with pytest.raises(ModelDirError, match=r"model.keras: has 5 outputs but thresholds.json names 4 labels"):
        Classifier(folder)


def tensorflow_loaded(pid):
    """Whether process `pid` has TensorFlow's library mapped (`import tensorflow` maps it; OpenVINO's TensorFlow
    front end, libopenvino_tensorflow_frontend, is another library)."""
    return "libtensorflow_framework" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.needs_data
@pytest.mark.parametrize("facts", ["cached", pytest.param("missing", marks=pytest.mark.slow)])  # slow: loads Keras
def test_the_server_imports_tensorflow_only_to_load_a_keras_model(cached, sea_photo, facts, tmp_path):
    """`python visualization.py` on a cached model: ready, a prediction with its class map and the model page, and
    TensorFlow never loaded; without the network's facts it loads the Keras model, importing TensorFlow quietly."""
    env = dict(os.environ, MIML_CACHE=str(cache_without_facts(tmp_path))) if facts == "missing" else None
    port = free_port()
    proc = start("--port", str(port), "--no-explore", env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("MIML Scenes ready"), proc.stderr.read()
        r = requests.post(
            f"http://127.0.0.1:{port}/api/predict?gradcam=sea", files={"image": ("sea.jpg", sea_photo)}, timeout=60
        )
        (result,) = r.json()["results"]
        expected = cached.analyse(sea_photo)  # the same cached model in this process
        assert (result["probabilities"], result["predicted"]) == (expected.probabilities, expected.predicted)
        assert "sea" in result["predicted"] and result["gradcam"]["png_base64"]
        r = requests.get(f"http://127.0.0.1:{port}/model", timeout=60)
        assert r.status_code == 200 and f"<th>Layers</th><td>{len(cached.layers())} " in r.text
        assert tensorflow_loaded(proc.pid) == (facts == "missing")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert not [l for l in err.splitlines() if START_UP_NOISE.match(l.encode()) or "oneDNN" in l], err


def test_tensorflow_imported_on_demand_by_two_threads_at_once_is_whole():
    """The server imports TensorFlow on demand, perhaps in two threads at once (a quick-mode job and a request
    that loads a Keras model): the second waits for the first instead of using a half-initialised TensorFlow."""
    code = textwrap.dedent(
        """
        import sys, threading, time
        from model.cli import quiet_tensorflow

        quiet_tensorflow(on_demand=True)  # as visualization.py
        first = threading.Thread(target=quiet_tensorflow)
        first.start()
        while "tensorflow" not in sys.modules:  # the first thread is importing it
            time.sleep(0.001)
        quiet_tensorflow()
        import keras

        print(keras.layers.Dense(3).units)
        first.join()
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout) == (0, "3\n"), done.stderr[-2000:]
    assert not [l for l in done.stderr.splitlines() if START_UP_NOISE.match(l.encode())], done.stderr
