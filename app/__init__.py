"""The MIML Scenes web app: `create_app` builds it around one loaded model."""

import os
from pathlib import Path

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import Forbidden, HTTPException, RequestEntityTooLarge, SecurityError

from app.scenes import Scenes
from app.uploads import InMemoryRequest
from workspace import Registry

ROOT = Path(__file__).resolve().parent.parent
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # per request
MAX_FILES = 16  # photos per request
MAX_FORM_PARTS = MAX_FILES + 16  # form fields and files per request
LOCAL_HOSTS = ["localhost", "127.0.0.1", "[::1]"]  # Host headers always answered (a DNS-rebinding guard)
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
SAME_ORIGIN = ("same-origin", "none")  # Sec-Fetch-Site values of a request this app's own pages (or a person) made

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with the app's own form posts
    # (Fetch's origin serialisation), and refuse_cross_site could not tell them from a sandboxed attacker's.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def label_mismatch(scenes):
    """A one-line warning when the dataset's labels are not the model's (the gallery cannot match them), else None."""
    if scenes.dataset is None or scenes.dataset.label_names == scenes.labels:
        return None
    return (
        f"the model's labels ({', '.join(scenes.labels)}) are not those of dataset {scenes.dataset.root.name} "
        f"({', '.join(scenes.dataset.label_names)}), and the dataset the model was trained on is not here: "
        f"the gallery shows only the model's test photos that {scenes.dataset.root.name} has, with the true "
        f"labels the model stored"
    )


def refuse_cross_site():
    """403 for a state-changing request that a browser marks as sent from anywhere but this app's own pages:
    Sec-Fetch-Site other than same-origin or none (same-site too: another port is another app), or, from a
    browser without Fetch Metadata, an Origin that is not this app's. Clients that send neither header (curl,
    scripts) are not a browser's victims, and pass."""
    if request.method not in STATE_CHANGING:
        return
    site, origin = request.headers.get("Sec-Fetch-Site"), request.headers.get("Origin")
    own = request.host_url.rstrip("/")
    if (site is not None and site not in SAME_ORIGIN) or (site is None and origin is not None and origin != own):
        raise Forbidden(
            f"refused: this {request.method} came from another site ({origin or site}); "
            f"only this app's own pages ({own}) may change anything"
        )


def create_app(
    model_dir=None,
    data_dir=None,
    scenes=None,
    allowed_hosts=(),
    runtime="auto",
    precision="auto",
    workers=None,
    explore=False,
    feedback_dir=None,
    runs_dir=None,
    runs_quota_bytes=None,
    jobs="local",
    ray_address=None,
):
    """The app for the model in `model_dir` (default: the shipped one) and the dataset in `data_dir` (optional);
    `runtime`, `precision`: what runs every forward pass (model.inference.choose_runtime; default: the fastest that
    passes the parity gate on this CPU); `workers`: forward passes that run at once;
    `explore`: similar photos and the map (the dataset's embeddings, computed in the background);
    `feedback_dir`: collect corrected labels there (workspace/feedback.py: DIR/feedback.sqlite);
    `runs_dir`: where uploaded datasets and trained models live (training, /models and /compare need it; without
    `model_dir` the model chosen there is served, and a given `scenes` must hold that one), at most
    `runs_quota_bytes` (default: model.datasets' 10 GB; workspace.Workspace checks uploads against it);
    `jobs`: where full-mode training runs, "local" or "ray" (on the Ray cluster whose dashboard is at `ray_address`).

    Requests whose Host header is not in LOCAL_HOSTS or `allowed_hosts` get a 400; state-changing requests
    from another site a 403 (`refuse_cross_site`); the HTML forms that change state carry a CSRF token."""
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.request_class = InMemoryRequest
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_UPLOAD_BYTES,
        MAX_FORM_PARTS=MAX_FORM_PARTS,
        MAX_FILES=MAX_FILES,
        JSON_SORT_KEYS=False,
        TRUSTED_HOSTS=list(dict.fromkeys([*LOCAL_HOSTS, *allowed_hosts])),
        SECRET_KEY=os.urandom(32),  # signs the session cookie that holds the CSRF token; new at each start
        SESSION_COOKIE_SAMESITE="Strict",
        WTF_CSRF_CHECK_DEFAULT=False,  # checked by the form views that change state (csrf.protect())
        WTF_CSRF_TIME_LIMIT=None,  # a page left open for hours still works (the token lives as long as the session)
    )
    CSRFProtect(app)
    app.before_request(refuse_cross_site)
    registry = Registry(runs_dir, data_dir, feedback_dir, jobs=jobs, ray_address=ray_address) if runs_dir else None
    served = registry.active() if registry and model_dir is None else None  # None: --model serves a directory
    if served and scenes is None:
        model_dir = registry.model_path(served)
    app.extensions["scenes"] = scenes or Scenes(
        model_dir,
        data_dir,
        runtime=runtime,
        precision=precision,
        workers=workers,
        explore=explore,
        feedback_dir=feedback_dir,
    )
    app.config["LABEL_MISMATCH"] = label_mismatch(app.extensions["scenes"])

    from app import api, download, explore, pages

    app.register_blueprint(pages.bp)
    app.register_blueprint(download.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(explore.bp)
    if registry:
        from app import labelling, training

        training.init(app, registry, served, (runtime, precision), workers)
        labelling.init(app, runs_dir, runs_quota_bytes)

    @app.context_processor
    def labels():
        return {
            "all_labels": app.extensions["scenes"].labels,
            "feedback_on": app.extensions["scenes"].feedback is not None,
        }

    @app.template_filter("folder_name")
    def folder_name(path):
        """The last part of a path the model's files record: the pages never show where files live."""
        return Path(str(path)).name

    @app.after_request
    def secure(response):
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.errorhandler(HTTPException)
    def http_error(e):
        message = e.description
        if isinstance(e, CSRFError):
            message = f"the form did not come from this app's page, or has expired ({e.description}): reload the page"
        elif isinstance(e, SecurityError):  # a Host header not in TRUSTED_HOSTS
            message = (
                f"this server does not answer for the host {request.environ.get('HTTP_HOST', '')!r}; "
                f"it answers for {', '.join(app.config['TRUSTED_HOSTS'])} (add one with --allowed-host)"
            )
        elif e.code == 413 and message == RequestEntityTooLarge.description:  # werkzeug's own, without a reason
            # A body within the size limit can only have gone over the form-parts limit.
            limit = request.max_content_length or MAX_UPLOAD_BYTES  # the route's own (a dataset ZIP: 200 MB)
            if request.content_length is not None and request.content_length <= limit:
                message = f"the upload has too many form parts: at most {MAX_FORM_PARTS} per request"
            else:
                message = f"the upload is too large: at most {limit // (1024 * 1024)} MB per request"
        if request.path.startswith("/api/"):
            return jsonify(error=message, **getattr(e, "extra", {})), e.code
        template = "bad_host.html" if isinstance(e, SecurityError) else "error.html"
        return render_template(template, code=e.code, title=e.name, message=message), e.code

    return app
