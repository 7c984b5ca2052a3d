"""The model as a download (model/bundle.py): the ZIP from /model/download, `python -m model.export --format
bundle`, and its predict.py run in a fresh virtual environment with only numpy, pillow and openvino (or, its fallback,
ai-edge-litert)."""

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from model.data import load_dataset, split
from model.inference import Classifier
from model.openvino_runtime import cpu_precisions

ROOT = Path(__file__).resolve().parent.parent
FILES = {"model.xml", "model.bin", "model.tflite", "labels.json", "README.md", "predict.py"}


def test_download_gives_a_zip_of_the_served_model(client_without_data):
    r = client_without_data.get("/model/download")
    assert r.status_code == 200 and r.mimetype == "application/zip"
    assert (
        "attachment" in r.headers["Content-Disposition"]
        and "miml-scenes-shipped.zip" in r.headers["Content-Disposition"]
    )
    with zipfile.ZipFile(io.BytesIO(r.data)) as z:
        assert {Path(n).name for n in z.namelist()} == FILES
        assert {Path(n).parent.name for n in z.namelist()} == {"miml-scenes-shipped"}
        meta = json.loads(z.read("miml-scenes-shipped/labels.json"))
        predict = z.read("miml-scenes-shipped/predict.py").decode()
        assert z.getinfo("miml-scenes-shipped/model.bin").file_size > 10_000_000
    served = client_without_data.get("/api/model").get_json()
    bf16 = "bf16" in cpu_precisions()  # what serves is said: auto, OpenVINO bf16 on this CPU (docs/runtime.md)
    assert (served["runtime"], served["precision"]) == (("openvino", "bf16") if bf16 else ("litert", "f32"))
    assert meta["labels"] == served["labels"] == ["desert", "mountains", "sea", "sunset", "trees"]
    assert meta["thresholds"] == pytest.approx(served["thresholds"]) and meta["at_least_one"] == served["at_least_one"]
    assert len(predict.splitlines()) <= 40
    assert client_without_data.get("/model/download?model=nope").status_code == 400  # no runs folder here
    page = client_without_data.get("/model").get_data(as_text=True)
    assert 'href="/model/download"' in page and f"{served['runtime']}, {served['precision']}" in page


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The shipped model's bundle, exported once for the module by `python -m model.export --format bundle`."""
    out = tmp_path_factory.mktemp("export") / "bundle"
    done = subprocess.run(
        [sys.executable, "-m", "model.export", "--format", "bundle", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == FILES
    return out


@pytest.mark.slow
@pytest.mark.needs_data
@pytest.mark.parametrize("runtime", ["openvino", "ai-edge-litert"])  # predict.py's first choice and its fallback
def test_bundle_predicts_the_apps_labels_in_a_fresh_venv(bundle, runtime, tmp_path, miml_data):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # no system site packages
    python = venv / "bin" / "python"
    pins = ROOT / "constraints.txt"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "-c", pins, runtime, "numpy", "pillow"], check=True, timeout=600
    )
    other = {"openvino": "ai_edge_litert", "ai-edge-litert": "openvino"}[runtime]
    assert subprocess.run([python, "-c", f"import {other}"], capture_output=True).returncode != 0  # only `runtime`
    dataset = load_dataset(miml_data)
    photos = [dataset.path(i) for i in split(len(dataset.images))[2][:5]]
    printed = subprocess.run(
        [python, bundle / "predict.py", *photos], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert printed.returncode == 0, printed.stderr
    app = Classifier()  # what the app serves
    expected = [", ".join(r["predicted"]) or "(no label)" for r in app.classify([app.load(p) for p in photos])]
    got = [line.split(": ", 1)[1].split("  (")[0] for line in printed.stdout.splitlines()]
    assert got == expected, printed.stdout
