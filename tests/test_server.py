"""`python visualization.py` as a user starts it: waitress's limits, Host checks, start-up errors."""

import http.client
import json
import socket
import urllib.request

import pytest

from app import MAX_UPLOAD_BYTES
from tests.helpers import free_port, get, start


@pytest.fixture(scope="module")
def server(miml_data):
    """The app under waitress on a free port, with one extra allowed host; yields (port, process)."""
    port = free_port()
    proc = start("--port", str(port), "--data", str(miml_data), "--allowed-host", "scenes.example", "--no-explore")
    line = proc.stdout.readline()
    assert line.strip() == f"MIML Scenes ready at http://localhost:{port}/", proc.stderr.read() if not line else line
    yield port, proc
    proc.terminate()
    proc.wait(timeout=30)


def test_bad_model_or_data_is_one_line_and_exit_2(tmp_path):
    for args, fragment in [
        (["--model", str(tmp_path / "none")], "model directory not found"),
        (["--data", str(tmp_path / "none")], "dataset directory not found"),
    ]:
        proc = start("--port", str(free_port()), *args)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert err.strip().splitlines()[-1].startswith("error: ") and fragment in err and "Traceback" not in err


def test_busy_port_is_one_line_and_exit_2_before_the_model_loads(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        # a missing model would be reported if the model were loaded first: the port is checked before
        proc = start("--port", str(port), "--model", str(tmp_path / "none"))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    assert err.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.needs_data
def test_starts_with_waitress_prints_url_and_serves(server):
    port, _ = server
    status, _, body = get(port, "/api/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = get(port, "/gallery")
    assert status == 200 and b"of 400 test photos" in body


@pytest.mark.needs_data
@pytest.mark.parametrize(
    "host, status",
    [
        ("localhost:{port}", 200),
        ("127.0.0.1:{port}", 200),
        ("[::1]:{port}", 200),
        ("scenes.example", 200),
        ("attacker.example", 400),
        ("localhost.attacker.example:{port}", 400),
    ],
)
def test_only_local_and_allowed_hosts_are_answered(server, host, status):
    port, _ = server
    host = host.format(port=port)
    code, headers, body = get(port, "/api/model", host=host)
    assert code == status
    if status == 400:
        error = json.loads(body)["error"]
        assert error == (
            f"this server does not answer for the host '{host}'; it answers for localhost, 127.0.0.1, "
            "[::1], scenes.example (add one with --allowed-host)"
        )
        assert headers["X-Frame-Options"] == "DENY"
        code, _, page = get(port, "/gallery", host=host)
        assert code == 400 and b"<h1>400" in page and b"attacker.example" in page and b"400 test photos" not in page
    else:
        assert json.loads(body)["labels"][0] == "desert"


@pytest.mark.needs_data
def test_a_request_is_answered_while_150_slow_clients_hold_connections(server):
    port, _ = server
    slow = []
    try:
        for _ in range(150):  # each sends half a request and then nothing
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n")
            slow.append(s)
        # answered before waitress drops the idle ones (channel_timeout, 30 s): served beside them, not after them
        # (benchmarks/slow_clients.py times it)
        status, _, body = get(port, "/api/health", timeout=25)
        assert status == 200 and json.loads(body) == {"status": "ok"}
    finally:
        for s in slow:
            s.close()


@pytest.mark.needs_data
def test_a_body_just_over_the_limit_is_answered_by_the_app(server):
    port, _ = server
    size = MAX_UPLOAD_BYTES + 200_000  # over the app's limit, not over waitress's
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "POST",
        "/api/predict",
        body=b"x" * size,
        headers={"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(size)},
    )
    r = conn.getresponse()
    assert r.status == 413 and r.headers["Content-Type"] == "application/json"
    assert json.loads(r.read()) == {"error": "the upload is too large: at most 10 MB per request"}
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    conn.close()


@pytest.mark.needs_data
@pytest.mark.slow  # waits for waitress's channel_timeout (30 s); benchmarks/slow_clients.py times it
def test_an_idle_connection_is_closed_by_the_server(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=90) as s:  # waitress's own default would be 120 s
        assert s.recv(1) == b""  # closed by the server, nothing sent


def test_labels_that_do_not_match_warn_on_start_and_in_the_gallery(tiny_dataset):
    port = free_port()
    proc = start("--port", str(port), "--data", str(tiny_dataset))
    try:
        assert proc.stdout.readline().startswith("MIML Scenes ready")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/gallery", timeout=30) as r:
            page = r.read().decode()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    warning = (
        "the model's labels (desert, mountains, sea, sunset, trees) are not those of dataset data (red, green, blue)"
    )
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warning in warnings[0]
    assert warning.replace("'", "&#39;") in page and 'class="notice' in page
