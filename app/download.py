"""GET /model/download[?model=ID]: the model as a ZIP to run elsewhere (model/bundle.py: OpenVINO IR, TFLite,
labels.json, README, predict.py). Built on the first download of a model and cached, then sent from disk."""

from flask import Blueprint, send_file

from app.training import requested_classifier

bp = Blueprint("download", __name__)


@bp.get("/model/download")
def bundle():
    classifier = requested_classifier()  # ?model=ID (404 for an unknown one), else the model the pages use
    return send_file(
        classifier.bundle_zip(),
        mimetype="application/zip",
        as_attachment=True,
        download_name=f"miml-scenes-{classifier.name}.zip",
    )
