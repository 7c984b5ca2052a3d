"""JSON API: /api/predict, /api/model, /api/health (and app/explore.py: /api/map, /api/feedback).
Errors are {"error": "..."} with a 4xx status (503 while the dataset's embeddings are computed)."""
import base64

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from app import render
from app.explore import ready_atlas, similar_count
from app.uploads import analyse, load, uploaded_files

bp = Blueprint("api", __name__, url_prefix="/api")


def scenes():
    return current_app.extensions["scenes"]


@bp.post("/predict")
def predict():
    s = scenes()
    label = request.args.get("gradcam")
    if label is not None and label not in s.labels:
        raise BadRequest(f"unknown label {label!r} for gradcam; labels are {', '.join(s.labels)}")
    k = similar_count(request.args.get("similar"))
    atlas = ready_atlas() if k else None
    results = []
    for name, data in uploaded_files(request, s.classifier):  # one photo decoded at a time
        if label is None:  # one forward pass gives the probabilities and the embedding
            _, embeddings, probs = s.classifier.forward(load(s.classifier, name, data)[None])
            embedding, result = embeddings[0], s.classifier.results(probs)[0]
        else:  # the class map comes from the same forward pass
            a = analyse(s.classifier, name, data)
            embedding = a.embedding
            png = render.heatmap_overlay(a.cams[label])
            result = {"probabilities": a.probabilities, "predicted": a.predicted,
                      "gradcam": {"label": label, "png_base64": base64.b64encode(png).decode()}}
        if k:
            result["similar"] = atlas.similar(embedding, k)
        results.append({"filename": name, **result})
    return jsonify(results=results, thresholds=s.thresholds)


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
