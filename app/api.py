"""JSON API: /api/predict, /api/model, /api/health (and app/explore.py: /api/map, /api/feedback).
Errors are {"error": "..."} with a 4xx status (503 while the dataset's embeddings are computed)."""

import base64

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import BadRequest

from app import render
from app.explore import ready_atlas, similar_count
from app.scenes import scenes
from app.training import requested_classifier
from app.uploads import analyse, load, uploaded_files

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.post("/predict")
def predict():
    s, c = scenes(), requested_classifier()  # ?model=ID, else the model the pages use
    label = request.args.get("gradcam")
    if label is not None and label not in c.labels:
        raise BadRequest(f"unknown label {label[:40]!r} for gradcam; labels are {', '.join(c.labels)}")
    k = similar_count(request.args.get("similar"))
    if k and c is not s.classifier:
        raise BadRequest("similar photos come from the model the pages use; leave out ?model= to get them")
    atlas = ready_atlas() if k else None
    results = []
    for name, data in uploaded_files(request, c):  # one photo decoded at a time
        if label is None:  # one forward pass gives the probabilities and the embedding
            _, embeddings, probs = c.forward(load(c, name, data)[None])
            embedding, result = embeddings[0], c.results(probs, embeddings)[0]
        else:  # the class map comes from the same forward pass
            a = analyse(c, name, data)
            embedding = a.embedding
            png = render.heatmap_overlay(a.cams[label])
            result = {
                "probabilities": a.probabilities,
                "predicted": a.predicted,
                "gradcam": {"label": label, "png_base64": base64.b64encode(png).decode()},
                "familiarity": a.familiarity and a.familiarity.as_dict(),
            }
        if k:
            result["similar"] = atlas.similar(embedding, k)
        results.append({"filename": name, **result})
    return jsonify(results=results, thresholds=c.thresholds)


@bp.get("/model")
def model_info():
    c = scenes().classifier
    card = c.card
    return jsonify(
        labels=c.labels,
        thresholds=c.thresholds,
        at_least_one=c.at_least_one,
        input_size=c.size,
        runtime=c.runtime,
        precision=c.precision,
        architecture=card.training.architecture,
        parameters=card.training.parameters,
        metrics={
            split: {k: scores[k] for k in c.HEADLINE + ["n_images"] if k in scores}
            for split, scores in (("validation", card.validation), ("test", card.test))
        },
    )


@bp.get("/health")
def health():
    return jsonify(status="ok")
