"""JSON API: /api/predict, /api/model, /api/health. Errors are {"error": "..."} with a 4xx status."""
import base64

import numpy as np
from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from app import render
from app.uploads import decode, uploaded_files
from model.metrics import HEADLINE
from model.preprocess import letterbox

bp = Blueprint("api", __name__, url_prefix="/api")


def scenes():
    return current_app.extensions["scenes"]


@bp.post("/predict")
def predict():
    s = scenes()
    label = request.args.get("gradcam")
    if label is not None and label not in s.labels:
        raise BadRequest(f"unknown label {label!r} for gradcam; labels are {', '.join(s.labels)}")
    named = [(name, decode(name, data)) for name, data in uploaded_files(request)]
    pixels = np.stack([np.asarray(letterbox(rgb, s.classifier.size)) for _, rgb in named])
    if label is None:
        results = [{"filename": name, **result} for (name, _), result in zip(named, s.classify(pixels))]
    else:  # Grad-CAM's pass gives the probabilities too: one pass a photo
        results = []
        for (name, _), image in zip(named, pixels):
            result = s.analyse(image)
            png = render.heatmap_overlay(result["cams"][label])
            results.append({"filename": name, "probabilities": result["probabilities"], "predicted": result["predicted"],
                            "gradcam": {"label": label, "png_base64": base64.b64encode(png).decode()}})
    return jsonify(results=results, thresholds=s.thresholds)


@bp.get("/model")
def model_info():
    s = scenes()
    metrics, training = s.classifier.info.metrics, s.classifier.info.metrics["training"]
    return jsonify(
        labels=s.labels,
        thresholds=s.thresholds,
        at_least_one=s.classifier.info.at_least_one,
        input_size=s.classifier.size,
        architecture=training.get("architecture"),
        parameters=training.get("parameters"),
        metrics={split: {k: metrics[split][k] for k in HEADLINE + ["n_images"] if k in metrics[split]}
                 for split in ("validation", "test")},
    )


@bp.get("/health")
def health():
    return jsonify(status="ok")
