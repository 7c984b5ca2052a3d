"""The MIML Scenes web app: `create_app` builds it around one loaded model."""
from pathlib import Path

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.scenes import Scenes
from app.uploads import InMemoryRequest

ROOT = Path(__file__).resolve().parent.parent
MAX_UPLOAD_BYTES = 10 * 1024 * 1024   # per request
MAX_FILES = 16                          # photos per request

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def create_app(model_dir=None, data_dir=None, scenes=None, runtime="litert", workers=None):
    """The app for the model in `model_dir` (default: the shipped one) and the dataset in `data_dir` (optional);
    `runtime`: "litert" (default) or "keras" for every forward pass; `workers`: LiteRT interpreters in the pool."""
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.request_class = InMemoryRequest
    app.config.update(MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES, MAX_FORM_MEMORY_SIZE=MAX_UPLOAD_BYTES, MAX_FORM_PARTS=MAX_FILES + 16,
                      MAX_FILES=MAX_FILES, JSON_SORT_KEYS=False)
    app.extensions["scenes"] = scenes or Scenes(model_dir, data_dir, runtime=runtime, workers=workers)

    from app import api, pages
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)

    @app.context_processor
    def labels():
        return {"all_labels": app.extensions["scenes"].labels}

    @app.after_request
    def secure(response):
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.errorhandler(HTTPException)
    def http_error(e):
        message = e.description
        if e.code == 413 and message == RequestEntityTooLarge.description:  # werkzeug's own: the body is too large
            message = f"the upload is too large: at most {MAX_UPLOAD_BYTES // (1024 * 1024)} MB per request"
        if request.path.startswith("/api/"):
            return jsonify(error=message), e.code
        return render_template("error.html", code=e.code, title=e.name, message=message), e.code

    return app
