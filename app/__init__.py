"""The MIML Scenes web app: `create_app` builds it around one loaded model."""

from pathlib import Path

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, SecurityError

from app.scenes import Scenes
from app.uploads import InMemoryRequest
from model.inference import Registry

ROOT = Path(__file__).resolve().parent.parent
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # per request
MAX_FILES = 16  # photos per request
MAX_FORM_PARTS = MAX_FILES + 16  # form fields and files per request
LOCAL_HOSTS = ["localhost", "127.0.0.1", "[::1]"]  # Host headers always answered (a DNS-rebinding guard)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def label_mismatch(scenes):
    """A one-line warning when the dataset's labels are not the model's (the gallery cannot match them), else None."""
    if scenes.dataset is None or scenes.dataset.label_names == scenes.labels:
        return None
    return (
        f"the model's labels ({', '.join(scenes.labels)}) are not the dataset's "
        f"({', '.join(scenes.dataset.label_names)}): the test gallery cannot show this dataset's photos "
        f"with this model's predictions; start with a --data and --model that belong together"
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
):
    """The app for the model in `model_dir` (default: the shipped one) and the dataset in `data_dir` (optional);
    `runtime`, `precision`: what runs every forward pass (model.inference.choose_runtime; default: the fastest that
    passes the parity gate on this CPU); `workers`: forward passes that run at once;
    `explore`: similar photos and the map (the dataset's embeddings, computed in the background);
    `feedback_dir`: collect corrected labels there (app/feedback.py);
    `runs_dir`: where uploaded datasets and trained models live (training, /models and /compare need it; without
    `model_dir` the model chosen there is served, and a given `scenes` must hold that one).

    Requests whose Host header is not in LOCAL_HOSTS or `allowed_hosts` get a 400."""
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.request_class = InMemoryRequest
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_UPLOAD_BYTES,
        MAX_FORM_PARTS=MAX_FORM_PARTS,
        MAX_FILES=MAX_FILES,
        JSON_SORT_KEYS=False,
        TRUSTED_HOSTS=list(dict.fromkeys([*LOCAL_HOSTS, *allowed_hosts])),
    )
    registry = Registry(runs_dir, data_dir, feedback_dir) if runs_dir else None
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
        labelling.init(app, runs_dir)

    @app.context_processor
    def labels():
        return {
            "all_labels": app.extensions["scenes"].labels,
            "feedback_on": app.extensions["scenes"].feedback is not None,
        }

    @app.after_request
    def secure(response):
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.errorhandler(HTTPException)
    def http_error(e):
        message = e.description
        if isinstance(e, SecurityError):  # a Host header not in TRUSTED_HOSTS
            message = (
                f"this server does not answer for the host {request.environ.get('HTTP_HOST', '')!r}; "
                f"it answers for {', '.join(app.config['TRUSTED_HOSTS'])} (add one with --allowed-host)"
            )
        elif e.code == 413 and message == RequestEntityTooLarge.description:  # werkzeug's own, without a reason
            # A body within the size limit can only have gone over the form-parts limit.
            if request.content_length is not None and request.content_length <= MAX_UPLOAD_BYTES:
                message = f"the upload has too many form parts: at most {MAX_FORM_PARTS} per request"
            else:
                message = f"the upload is too large: at most {MAX_UPLOAD_BYTES // (1024 * 1024)} MB per request"
        if request.path.startswith("/api/"):
            return jsonify(error=message, **getattr(e, "extra", {})), e.code
        template = "bad_host.html" if isinstance(e, SecurityError) else "error.html"
        return render_template(template, code=e.code, title=e.name, message=message), e.code

    return app
