"""The hardening that needs a real process: waitress's body limit, the predict CLI on a sparse file."""

import socket
import struct
import subprocess
import sys
import time

import pytest

from tests.hostile import png_claiming
from tests.helpers import ROOT, free_port, start

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    port = free_port()
    proc = start("--port", str(port), "--runs", str(tmp_path_factory.mktemp("runs")), "--no-explore")
    assert proc.stdout.readline().startswith("MIML Scenes ready"), proc.stderr.read()
    yield port
    proc.terminate()
    proc.wait(timeout=30)


def test_a_body_over_the_largest_route_limit_is_refused_before_it_is_sent(port):
    """300 MB declared to /api/predict: answered from the headers alone (waitress's limit is the dataset
    route's 200 MB + 1 MB), so nothing of it is read or spooled to /tmp."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: %d\r\n\r\n" % (300 << 20)
        )
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413") and time.perf_counter() - started < 5, answer[:200]


def test_the_predict_cli_refuses_a_sparse_file_in_one_line(tmp_path):
    path = tmp_path / "sparse.png"
    with open(path, "wb") as f:
        f.write(png_claiming(64, 64)[:33] + struct.pack(">I", 3 << 30) + b"zTXt")
        f.truncate(3 << 30)
    r = subprocess.run([sys.executable, "-m", "model.predict", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert "Traceback" not in r.stderr
    assert f"{path}" in r.stdout + r.stderr and "byte limit for a photo" in r.stdout + r.stderr
