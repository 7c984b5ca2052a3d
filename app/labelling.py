"""Labelling photos in the browser, with the live model in the loop (the user's data: workspace.Workspace).

    GET    /api/datasets/ID                  counts, per-label positives/negatives, the live estimate, "ready"
    GET    /api/datasets/ID/queue?k=N&strategy=auto|random|uncertain|likely:LABEL
                                             {"photos": [{"image", "suggested", "probabilities"}]}, unlabelled only
    PUT    /api/datasets/ID/labels/IMAGE     {"labels": [...]}: the photo's full set, saved at once
    DELETE /api/datasets/ID/labels/IMAGE     not labelled any more (the labeller's undo of a first decision)
    GET    /api/datasets/ID/photos/IMAGE     the photo
    GET    /api/datasets/ID/export           the labelled photos as a ZIP (labels.csv + original/)
    /label, /label/ID                        the pages
(POST /api/datasets, in app/training.py, creates a dataset through Workspace.create_dataset.)
"""

import dataclasses
import tempfile

from flask import Blueprint, current_app, jsonify, render_template, request, send_file
from werkzeug.exceptions import BadRequest

from app.training import STATUSES
from workspace import Workspace, WorkspaceError

bp = Blueprint("labelling", __name__)


def init(app, runs_dir, quota_bytes=None):
    """The workspace of `runs_dir`, which takes every dataset upload within `quota_bytes` (None: its default)."""
    app.extensions["workspace"] = Workspace(runs_dir, **({"quota_bytes": quota_bytes} if quota_bytes else {}))
    app.register_blueprint(bp)

    @app.errorhandler(WorkspaceError)
    def workspace_error(e):  # 507 too (the runs quota): werkzeug has no class for it
        return app.handle_http_exception(STATUSES[e.status](str(e)))


def workspace():
    return current_app.extensions["workspace"]


@bp.get("/api/datasets/<dataset_id>")
def dataset_summary(dataset_id):
    return jsonify(dataclasses.asdict(workspace().summary(dataset_id)))


@bp.get("/api/datasets/<dataset_id>/queue")
def queue(dataset_id):
    try:
        k = int(request.args.get("k", "10"))
    except ValueError:
        raise BadRequest("k must be a whole number from 1 to 100") from None
    photos = workspace().queue(dataset_id, k, request.args.get("strategy", "auto"))
    return jsonify(photos=[dataclasses.asdict(p) for p in photos])


@bp.put("/api/datasets/<dataset_id>/labels/<image>")
def set_labels(dataset_id, image):
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or set(body) != {"labels"}:
        raise BadRequest('send {"labels": [...]} as JSON: the photo\'s labels (an empty list: none of them)')
    return jsonify(dataclasses.asdict(workspace().decide(dataset_id, image, body["labels"])))


@bp.delete("/api/datasets/<dataset_id>/labels/<image>")
def unset_labels(dataset_id, image):
    return jsonify(dataclasses.asdict(workspace().decide(dataset_id, image, None)))


@bp.get("/api/datasets/<dataset_id>/photos/<image>")
def photo(dataset_id, image):
    return send_file(workspace().photo_path(dataset_id, image), max_age=3600)


@bp.get("/api/datasets/<dataset_id>/export")
def export(dataset_id):
    out = tempfile.TemporaryFile()
    workspace().export_zip(dataset_id, out)
    out.seek(0)
    return send_file(out, mimetype="application/zip", as_attachment=True, download_name=f"{dataset_id}.zip")


@bp.get("/label")
def label_index():
    datasets = current_app.extensions["registry"].datasets()
    return render_template(
        "label.html",
        datasets=[d for d in datasets if d["dataset"] not in ("data", "feedback")],
        max_mb=current_app.config["MAX_DATASET_BYTES"] // (1024 * 1024),
    )


@bp.get("/label/<dataset_id>")
def labeller(dataset_id):
    summary = workspace().summary(dataset_id)
    return render_template("labeller.html", summary=summary)
