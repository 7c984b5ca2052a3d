"""JSON API: /api/predict, /api/model, /api/health. Errors are {"error": "..."} with a 4xx status."""
import base64

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from app import render
from app.training import requested_classifier
from app.uploads import analyse, load, uploaded_files

bp = Blueprint("api", __name__, url_prefix="/api")


def scenes():
    return current_app.extensions["scenes"]


@bp.post("/predict")
def predict():
    c = requested_classifier()  # ?model=ID, else the model the pages use
    label = request.args.get("gradcam")
    if label is not None and label not in c.labels:
        raise BadRequest(f"unknown label {label!r} for gradcam; labels are {', '.join(c.labels)}")
    results = []
    for name, data in uploaded_files(request, c):  # one photo decoded at a time
        if label is None:
            result = c.classify(load(c, name, data)[None], batch_size=1)[0]
        else:  # the class map comes from the same forward pass
            a = analyse(c, name, data)
            png = render.heatmap_overlay(a.cams[label])
            result = {"probabilities": a.probabilities, "predicted": a.predicted,
                      "gradcam": {"label": label, "png_base64": base64.b64encode(png).decode()}}
        results.append({"filename": name, **result})
    return jsonify(results=results, thresholds=c.thresholds)


@bp.get("/model")
def model_info():
    c = scenes().classifier
    training = c.metrics["training"]
    return jsonify(
        labels=c.labels,
        thresholds=c.thresholds,
        at_least_one=c.at_least_one,
        input_size=c.size,
        runtime=c.runtime,
        architecture=training.get("architecture"),
        parameters=training.get("parameters"),
        metrics={split: {k: c.metrics[split][k] for k in c.HEADLINE + ["n_images"] if k in c.metrics[split]}
                 for split in ("validation", "test")},
    )


@bp.get("/health")
def health():
    return jsonify(status="ok")
