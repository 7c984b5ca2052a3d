"""Batch prediction on Ray Data (model/ray_batch.py, `model.predict --engine ray`) against the in-process path.

One local Ray for the module (2 CPUs, no dashboard, its files in a temporary folder, shut down at the end),
on 100 MIML photos with the shipped model."""

import csv
import os
import shutil
import tempfile

import pytest

ray = pytest.importorskip("ray")

from model import ray_batch  # noqa: E402
from model.predict import main  # noqa: E402

pytestmark = pytest.mark.ray

PHOTOS = 100


@pytest.fixture(scope="module")
def local_ray():
    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must stay under 107 characters
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # else Ray writes a token into ~/.ray
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE")
    else:
        os.environ["RAY_AUTH_MODE"] = saved
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def photos(miml_data, tmp_path_factory):
    """100 MIML photos in two folders, with a file that is not a photo between them and a text file skipped."""
    root = tmp_path_factory.mktemp("photos")
    for i, photo in enumerate(sorted((miml_data / "original").iterdir())[:PHOTOS]):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        os.symlink(photo, folder / photo.name)
    (root / "a" / "broken.jpg").write_text("not a photo")
    (root / "notes.txt").write_text("no image suffix: not listed")
    return root


def cli(*args):
    with pytest.raises(SystemExit) as exit:
        main([*map(str, args)])
    return exit.value.code


def read_csv(path):
    return list(csv.reader(open(path, newline="")))


@pytest.mark.needs_data
def test_ray_csv_is_byte_for_byte_the_in_process_csv(local_ray, photos, tmp_path):
    assert cli(photos, "--csv", tmp_path / "local.csv") == 1  # exit code 1: one file could not be read
    assert cli(photos, "--engine", "ray", "--csv", tmp_path / "ray.csv") == 1
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    rows = read_csv(tmp_path / "ray.csv")
    assert len(rows) == 1 + PHOTOS + 1 and rows[0] == [
        "path",
        "desert",
        "mountains",
        "sea",
        "sunset",
        "trees",
        "predicted",
        "familiarity",
        "unfamiliar",
        "error",
    ]
    broken = [r for r in rows if r[0].endswith("broken.jpg")]
    assert broken[0][-1].startswith("not an image format") and broken[0][1:-1] == [""] * 8
    assert all(r[8] in ("0", "1") and 0 < float(r[7]) <= 1 for r in rows[1:] if not r[-1])  # MIML photos: scored


@pytest.mark.needs_data
def test_list_file_glob_uri_and_parquet(local_ray, photos, tmp_path):
    import pyarrow.parquet as pq

    first = sorted((photos / "a").glob("*.jpg"))[:3]
    listing = tmp_path / "paths.txt"
    listing.write_text(
        f"# photos\n{first[0]}\n\nfile://{first[1]}\n{tmp_path / 'missing.jpg'}\n{photos}/b/1*.jpg\n"
        "nosuch://bucket/photo.jpg\n"
    )
    paths = list(ray_batch.list_paths([listing]))
    assert paths[:3] == [str(first[0]), f"file://{first[1]}", str(tmp_path / "missing.jpg")]
    assert paths[3] == f"{photos}/b/1*.jpg"  # a list names files; a glob is expanded only as a SOURCE
    globbed = list(ray_batch.list_paths([f"{photos}/b/1*.jpg", f"file://{photos / 'a'}"]))
    assert globbed == sorted(map(str, (photos / "b").glob("1*.jpg"))) + sorted(
        f"file://{p}" for p in (photos / "a").glob("*.jpg")
    )

    assert cli(listing, "--engine", "ray", "--parquet", tmp_path / "out") == 1
    table = pq.read_table(tmp_path / "out").to_pylist()
    assert [r["path"] for r in table] == paths
    assert [r["error"] for r in table][:4] == ["", "", "No such file or directory", "No such file or directory"]
    assert "nosuch" in table[4]["error"]  # pyarrow knows no such file system: an error row, not a failed job
    assert cli(first[0], first[1], "--csv", tmp_path / "local.csv") == 0
    local = read_csv(tmp_path / "local.csv")[1:]
    for row, want in zip(table, local):  # unrounded float32 in Parquet, 4 places in the CSV
        assert [round(row[label], 4) for label in ("desert", "mountains", "sea", "sunset", "trees")] == [
            float(v) for v in want[1:6]
        ]
        assert row["predicted"] == want[6]


def test_arguments(local_ray, tmp_path, capsys):
    assert cli(tmp_path, "--parquet", tmp_path / "out") == 2  # --parquet without --engine ray
    assert cli(tmp_path, "--engine", "ray") == 2  # nowhere to write
    assert cli(tmp_path, "--engine", "ray", "--csv", tmp_path / "a.csv", "--parquet", tmp_path / "b") == 2
    capsys.readouterr()
    assert cli(tmp_path, "--engine", "ray", "--csv", tmp_path / "a.csv") == 2  # an empty folder: no photos
    assert "no photos found" in capsys.readouterr().err
