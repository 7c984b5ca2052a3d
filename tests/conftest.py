"""Fixtures the test modules share. Helpers (paths, generated datasets, the CLIs) are in tests/helpers.py.

Markers (registered in pytest.ini): `needs_data` (reads $MIML_DATA), `slow` (trains, or runs over the whole
dataset), `browser` (Chromium), `ray`. The fast tier is `python -m pytest -m "not slow and not browser and not ray"`;
docs/testing.md lists the tiers. A test whose fixtures reach the dataset, Chromium, Ray or a training run must carry
that marker: collection stops with a list of the ones that do not."""

import ctypes
import gc
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import CHROMIUM_ARGS, ROOT, SHOTS, TINY_TRAINING, make_tiny_dataset, serve

MARKER_OF_FIXTURE = {
    "miml_data": "needs_data",
    "browser": "browser",
    "local_ray": "ray",
    "starting_ray_head": "ray",  # and ray_head, which starts from it
    "tiny_model": "slow",
}


def pytest_collection_modifyitems(config, items):
    unmarked = [
        f"{item.nodeid} uses the fixture {fixture} but is not marked {marker}"
        for item in items
        for fixture, marker in MARKER_OF_FIXTURE.items()
        if fixture in item.fixturenames and item.get_closest_marker(marker) is None
    ]
    if unmarked:
        raise pytest.UsageError("tests without their markers:\n  " + "\n  ".join(unmarked))


def pytest_collection_finish(session):
    """The test modules' imports (TensorFlow, Keras, OpenVINO: about 430,000 objects) live for the whole run: freeze
    them so that no garbage collection scans them again (a full one took 0.2-0.3 s; collections add up over a run)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="module", autouse=True)
def _hand_back_memory():
    """Once a module's fixtures are gone, give their freed memory back to the system: glibc keeps what
    TensorFlow freed (models, exports, datasets) in its arenas, so the next module would start that much higher."""
    yield
    gc.collect()
    if sys.platform == "linux":  # glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# --- data -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def miml_data():
    """The real MIML dataset from $MIML_DATA; CI sets it, so there a missing dataset fails loudly."""
    path = os.environ.get("MIML_DATA")
    message = "MIML_DATA is not set: point it at the MIML dataset (labels.csv + original/), e.g. ../shared/miml"
    if not path:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if not (Path(path) / "original").is_dir():
        pytest.fail(f"MIML_DATA={path} has no original/ folder of photos")
    return Path(path)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset, tmp_path_factory):
    """A real EfficientNet-Lite0 model directory trained for one epoch on the 3-label tiny dataset."""
    from model.train import main

    out = tmp_path_factory.mktemp("tinymodel") / "model"
    main(["--data", str(tiny_dataset), "--out", str(out), *TINY_TRAINING])
    return out


def _first_with(miml_data, label):
    import csv

    for row in csv.DictReader(open(miml_data / "labels.csv")):
        if row[label] == "1" and sum(int(row[k]) for k in row if k != "image") == 1:
            return (miml_data / "original" / row["image"]).read_bytes()


@pytest.fixture(scope="session")
def sea_photo(miml_data):
    """A photo labelled only 'sea'."""
    return _first_with(miml_data, "sea")


@pytest.fixture(scope="session")
def desert_photo(miml_data):
    return _first_with(miml_data, "desert")


@pytest.fixture(scope="module")
def seed_model_dir(tmp_path_factory):
    """The shipped model directory with an untrained seed CNN as its network: a small model to convert (the
    ensemble's conversions take a minute and 1 GB)."""
    from model.network import build_seed_cnn

    folder = tmp_path_factory.mktemp("seed") / "seed"
    shutil.copytree(ROOT / "model" / "shipped", folder)
    build_seed_cnn(["desert", "mountains", "sea", "sunset", "trees"]).save(folder / "model.keras")
    return folder


# --- the app ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def scenes(miml_data):
    """The app's model and dataset, warmed up with one classify and one analyse of a real photo: TensorFlow
    writes an autograph file on its first call, which a test checking that nothing is written must not see."""
    from app.scenes import Scenes

    scenes = Scenes(data_dir=miml_data)
    photo = miml_data / "original" / scenes.dataset.images[0]
    scenes.classifier.classify(scenes.classifier.load(photo)[None], batch_size=1)
    scenes.classifier.analyse(photo)
    return scenes


@pytest.fixture()
def client(scenes):
    from app import create_app

    return create_app(scenes=scenes).test_client()


@pytest.fixture(scope="session")
def client_without_data():
    from app import create_app

    return create_app().test_client()


@pytest.fixture(scope="module")
def base_url(scenes):
    """The app on the shipped model and the MIML dataset, served for the browser."""
    from app import create_app

    yield from serve(create_app(scenes=scenes))


# --- Chromium ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    """A page whose script errors and console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    yield page
    context.close()
    assert not errors, f"browser errors: {errors}"
