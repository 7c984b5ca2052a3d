"""`python -m model.predict` on awkward real folders: each odd entry gets its error row, the run goes on."""

import csv
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from model.batch import expand
from tests.helpers import ROOT

DEPTH = 1100  # deeper than Python's recursion limit


def predict(*args, stderr=subprocess.PIPE):
    return subprocess.run(
        [sys.executable, "-m", "model.predict", *map(os.fsencode, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        timeout=180,
    )


@pytest.fixture()
def awkward(tmp_path, sea_photo):
    """A folder with a photo, a symlink loop and a non-UTF-8 name, a photo 1100 folders down, and a FIFO."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(sea_photo)
    (photos / "loop.jpg").symlink_to("loop.jpg")
    non_utf8 = os.fsdecode(bytes(photos) + b"/b\xff.jpg")
    with open(non_utf8, "wb") as f:
        f.write(sea_photo)
    deep = photos / "deep"
    for _ in range(DEPTH + 1):  # one at a time: Path.mkdir(parents=True) recurses, as does shutil.rmtree
        deep.mkdir()
        deep = deep / "d"
    (deep.parent / "deep.jpg").write_bytes(sea_photo)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    yield photos, non_utf8, fifo
    (deep.parent / "deep.jpg").unlink()
    for folder in list(deep.parents)[: DEPTH + 1]:  # so that pytest can clean up tmp_path
        folder.rmdir()


@pytest.mark.needs_data
def test_expand_walks_any_depth_and_lists_a_symlink_loop(awkward):
    photos, non_utf8, _ = awkward
    found = [str(p) for p in expand([photos])]
    deep = str(photos / "deep" / os.path.join(*["d"] * DEPTH) / "deep.jpg")
    assert found == [str(photos / "a.jpg"), non_utf8, deep, str(photos / "loop.jpg")]  # name order, depth first


@pytest.mark.needs_data
def test_csv_gets_a_row_for_each_and_the_run_goes_on(awkward, tmp_path):
    photos, non_utf8, fifo = awkward
    out = tmp_path / "out.csv"
    main, terminal = pty.openpty()  # stderr a terminal: the progress bar is drawn
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns, as a real one has
    try:
        r = predict(photos, fifo, "--csv", out, stderr=terminal)
        os.close(terminal)
        err = b""
        while chunk := _read(main):
            err += chunk
    finally:
        os.close(main)
    err = err.decode(errors="replace")
    assert r.returncode == 1 and r.stdout == b"" and "Traceback" not in err
    assert "5/5" in err and "photo/s" in err  # tqdm's bar reached the end
    assert err.strip().splitlines()[-1] == f"3 photos predicted, 2 could not be read (see {out})"
    with open(out, newline="", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == [str(p) for p in expand([photos])] + [str(fifo)]
    errors = {row["path"]: row["error"] for row in rows}
    assert errors[str(photos / "loop.jpg")] == "Too many levels of symbolic links"
    assert errors[str(fifo)] == "not a regular file"
    assert errors[non_utf8] == "" and rows[1]["predicted"] == rows[0]["predicted"] == "sea"  # the same photo
    assert rows[2]["predicted"] == "sea" and float(rows[2]["sea"]) == float(rows[0]["sea"])


def _read(fd):
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the other end is closed
        return b""


@pytest.mark.needs_data
def test_lines_keep_a_non_utf8_name_as_its_bytes(awkward):
    _, non_utf8, fifo = awkward
    r = predict(non_utf8, fifo)
    assert r.returncode == 1
    assert r.stdout.startswith(os.fsencode(non_utf8) + b": sea")
    assert r.stderr.decode().strip().splitlines()[-1] == f"{fifo}: error: not a regular file"


def test_no_photos_found_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no image here")
    r = predict(tmp_path / "empty", tmp_path / "notes")
    assert r.returncode == 2 and r.stdout == b""
    lines = r.stderr.decode().strip().splitlines()
    assert lines[-1] == (
        f"error: no photos found in {tmp_path / 'empty'}, {tmp_path / 'notes'} "
        "(image files end in .avif, .bmp, .gif, .heic, .heif, .jpeg, .jpg, .png, .tif, .tiff, .webp)"
    )
    assert not any(line.startswith("error") for line in lines[:-1]) and "Traceback" not in r.stderr.decode()
