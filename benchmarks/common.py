"""Helpers the benchmarks share: timing medians, multipart request bodies, app servers on loopback."""

import http.client
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid


def median_ms(fn, repeats, warmup=3):
    """Median wall time of `fn()` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def multipart(name, data, field="image"):
    """(body, headers) of a multipart/form-data request carrying one file."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


def call(port, method, url, body=None, headers=None, expect=None):
    """(status, body) of one request on loopback; with `expect`, any other status raises."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        response = conn.getresponse()
        status, payload = response.status, response.read()
    finally:
        conn.close()
    if expect is not None and status != expect:
        raise RuntimeError(f"{method} {url}: {status} {payload[:200]!r}")
    return status, payload


def start_server(root, args=(), timeout=180, python_args=()):
    """`python visualization.py` (waitress) from folder `root` on a free port: (process, port) once it answers.
    `python_args` go before the script (a launcher such as ("-c", CODE) that runs it)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *python_args, "visualization.py", "--server", "waitress", "--port", str(port), *args],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if call(port, "GET", "/api/health")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the app in {root} did not start within {timeout} s")


def in_threads(fn, n):
    """Run `fn()` in `n` threads at once; seconds until all are done."""
    started = time.perf_counter()
    threads = [threading.Thread(target=fn) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started
