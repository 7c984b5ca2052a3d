"""Cross-site requests in headless Chromium: a page served from a second loopback port (another origin, the
same site) tries what the attack of issue 21 did: delete a model, switch the model, upload a dataset, and
change a photo's labels in the labeller. Every one is refused and nothing changes; the app's own pages still do
the same things."""

import http.server
import io
import shutil
import threading

import pytest
from werkzeug.serving import make_server

from model.modeldir import SHIPPED_MODEL_DIR
from tests.hostile import good_members, zip_bytes
from tests.helpers import SHOTS
from workspace import Registry, Workspace

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    shutil.copytree(SHIPPED_MODEL_DIR, runs / "models" / "victim")
    return runs


@pytest.fixture(scope="module")
def labelled(runs):
    """A dataset in the labeller (photo 1.jpg labelled a), whose labels the attacker tries to change."""
    from workspace import Workspace

    return Workspace(runs).create_dataset(io.BytesIO(zip_bytes(good_members())), "victim.zip").dataset


def serve(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def app_url(runs):
    from app import create_app
    from app.scenes import Scenes

    server = serve(make_server("127.0.0.1", 0, create_app(scenes=Scenes(), runs_dir=runs), threaded=True))
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def attack_pages(app_url, dataset):
    """The attacker's pages: {path: HTML}. Forms submit themselves; fetches are "no-cors" (no preflight), but
    for the labeller's PUT, which a browser sends only after a CORS preflight."""
    form = (
        '<form id="f" method="post" action="{url}">{fields}</form><script>document.getElementById("f").submit()'
        "</script>"
    )
    hidden = '<input type="hidden" name="{}" value="{}">'
    zip_js = ",".join(str(b) for b in zip_bytes(good_members()))
    return {
        "/delete.html": form.format(
            url=f"{app_url}/models/delete", fields=hidden.format("model", "victim") + hidden.format("confirm", "yes")
        ),
        "/use.html": form.format(url=f"{app_url}/models/use", fields=hidden.format("model", "victim")),
        "/upload.html": f"""<script>
            const body = new FormData();
            body.append("file", new Blob([new Uint8Array([{zip_js}])]), "x.zip");
            fetch("{app_url}/api/datasets", {{method: "POST", mode: "no-cors", body}})
              .then(() => document.title = "sent", () => document.title = "sent");
            </script>""",
        "/label.html": f"""<script>
            const done = () => document.title = "sent";
            fetch("{app_url}/api/datasets/{dataset}/labels/1.jpg", {{method: "PUT", mode: "cors",
              headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{labels: ["b"]}})}})
              .then(done, done);
            </script>""",
    }


@pytest.fixture(scope="module")
def attacker_url(app_url, labelled):
    pages = attack_pages(app_url, labelled)

    class Attacker(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker))
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_another_origin_changes_nothing_and_the_app_still_does(browser, app_url, attacker_url, runs, labelled):  # noqa: F811
    page = browser.new_page()  # not tests.test_browser's `page`: the refusals are 403s it would count as errors
    page.goto(app_url + "/models")  # the user's session with the app exists (its cookie would be sent)
    for attack in ("delete", "use"):
        page.goto(f"{attacker_url}/{attack}.html")
        page.wait_for_url(f"{app_url}/models/{attack}")
        assert "another site" in page.locator("body").inner_text()
    page.screenshot(path=str(SHOTS / "cross-site-refused.png"), full_page=True)
    page.goto(f"{attacker_url}/upload.html")
    page.wait_for_function("document.title === 'sent'")
    page.wait_for_timeout(500)
    page.goto(f"{attacker_url}/label.html")
    page.wait_for_function("document.title === 'sent'")
    page.wait_for_timeout(500)
    assert (runs / "models" / "victim" / "model.keras").is_file()
    assert [p.name for p in (runs / "datasets").iterdir()] == [labelled]
    assert Registry(runs).active() == "shipped"
    assert [d.labels for d in Workspace(runs).history(labelled, "1.jpg")] == [["a"]]  # the import's decision only

    page.goto(app_url + "/models")  # the app's own forms, with their CSRF tokens
    page.locator("tr[data-model='victim'] [data-use]").click()
    page.locator("tr[data-model='victim'] .chip", has_text="in use").wait_for()
    page.locator("tr[data-model='shipped'] [data-use]").click()
    page.locator("tr[data-model='shipped'] .chip", has_text="in use").wait_for()
    page.locator("tr[data-model='victim'] input[name=confirm]").check()
    page.locator("tr[data-model='victim'] [data-delete]").click()
    page.wait_for_url(app_url + "/models")
    assert page.locator("tr[data-model='victim']").count() == 0
    assert not (runs / "models" / "victim").exists()
