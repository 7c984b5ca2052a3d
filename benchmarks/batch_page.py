"""The batch page (/batch) end to end: a folder of N photos through headless Chromium against waitress.

    python benchmarks/batch_page.py --data DIR [--photos 1000]

Copies the first N MIML photos (cycling when N > 2000) and 2 bad files into a temporary folder, starts
`python visualization.py --server waitress`, picks the folder on /batch and waits for the table. Reports the
time from picking to the last row, the rows and error rows, the page's JavaScript heap and the server's memory.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--enable-precise-memory-info",
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--photos", type=int, default=1000)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    from benchmarks.common import rss_mb, start_server
    from model.data import load_dataset

    dataset = load_dataset(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i in range(args.photos):
            shutil.copyfile(dataset.path(i % len(dataset.images)), folder / f"{i:05d}.jpg")
        (folder / "bad.jpg").write_bytes(b"not a photo")
        (folder / "empty.png").write_bytes(b"")
        server, port = start_server(ROOT, ["--data", args.data])
        try:
            rss_before = rss_mb(server.pid)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_ARGS
                )
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/batch")
                started = time.perf_counter()
                page.set_input_files("[data-batch-folder]", str(folder))
                page.wait_for_selector("[data-batch-status]:has-text('Done')", timeout=900_000)
                seconds = time.perf_counter() - started
                rows = page.locator("[data-batch-table] tbody tr").count()
                errors = page.locator("[data-batch-table] tbody tr.error").count()
                heap = page.evaluate("performance.memory.usedJSHeapSize") / 2**20
                status = page.inner_text("[data-batch-status]")
                browser.close()
            print(
                f"{args.photos} photos + 2 bad files: {seconds:.1f} s from picking the folder to the full table "
                f"({(args.photos + 2) / seconds:.1f} photos/s); {rows} rows, {errors} error rows"
            )
            print(f"page status: {status}")
            print(f"page JS heap {heap:.1f} MiB; server RSS {rss_before:.0f} -> {rss_mb(server.pid):.0f} MiB")
            ok = rows == args.photos + 2 and errors == 2
        finally:
            server.terminate()
            server.wait()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
