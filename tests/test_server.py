"""`python visualization.py` as a user starts it."""
import socket
import subprocess
import sys
import urllib.request

from tests.conftest import ROOT


def start(*args):
    return subprocess.Popen([sys.executable, "visualization.py", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_bad_model_or_data_is_one_line_and_exit_2(tmp_path):
    for args, fragment in [(["--model", str(tmp_path / "none")], "model directory not found"),
                           (["--data", str(tmp_path / "none")], "dataset directory not found")]:
        proc = start(*args)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert err.strip().splitlines()[-1].startswith("error: ") and fragment in err and "Traceback" not in err


def test_starts_with_waitress_prints_url_and_serves(miml_data):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start("--port", str(port), "--data", str(miml_data))
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"MIML Scenes ready at http://localhost:{port}/"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=30) as r:
            assert r.status == 200 and b'"ok"' in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/gallery", timeout=30) as r:
            assert b"of 400 test photos" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
