"""Exploring the model: similar dataset photos, the embedding map (/map, /api/map) and label feedback (/api/feedback).

The dataset's embeddings come from `scenes().atlas` (model/atlas.py through the Classifier), computed in the
background after start-up: until they are ready, what needs them answers 503 with the progress."""

import re

from flask import Blueprint, jsonify, render_template, request
from werkzeug.exceptions import BadRequest, Conflict, NotFound, ServiceUnavailable

from app.scenes import scenes
from app.uploads import load, uploaded_files
from workspace import FeedbackLabelsError

bp = Blueprint("explore", __name__)
MAX_SIMILAR = 50
SIMILAR_ON_CARDS = 6


class NotReady(ServiceUnavailable):
    """503 while the dataset's embeddings are computed; the JSON answer carries the progress too."""

    def __init__(self, status):
        super().__init__(status["message"])
        self.extra = {"progress": status["progress"]}


def ready_atlas():
    """The dataset's atlas once it is computed: 404 without a dataset, 503 (with the progress) before."""
    atlas = scenes().atlas
    if atlas is None:
        raise NotFound("similar photos and the map need the dataset: start the app with --data DIR")
    status = atlas.status()
    if not status["ready"]:
        raise NotReady(status)
    return atlas


def similar_count(value):
    """The `similar` query parameter: None when absent, else a whole number from 1 to MAX_SIMILAR (400 otherwise)."""
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,3}", value) or not 1 <= int(value) <= MAX_SIMILAR:  # ASCII digits only
        raise BadRequest(f"similar must be a whole number from 1 to {MAX_SIMILAR}, not {value[:20]!r}")
    return int(value)


def similar_on_card(embedding, exclude=None):
    """What a card shows: {"photos": [...]} or {"message": "computing similar photos: 40%"}; None without a dataset."""
    atlas = scenes().atlas
    if atlas is None:
        return None
    status = atlas.status()
    if not status["ready"]:
        return {"message": status["message"]}
    return {"photos": atlas.similar(embedding, SIMILAR_ON_CARDS, exclude=exclude)}


@bp.get("/map")
def map_page():
    return render_template("map.html", has_data=scenes().atlas is not None)


@bp.get("/api/map")
def map_points():
    return jsonify(points=ready_atlas().points())


@bp.post("/api/feedback")
def feedback():
    s = scenes()
    if s.feedback is None:
        raise NotFound("feedback is off: start the app with --feedback DIR to collect corrected labels")
    if "labels" not in request.form:
        raise BadRequest("send the true labels in the form field 'labels', comma-separated (empty for none)")
    try:
        s.feedback.check_labels(s.labels)
    except FeedbackLabelsError as e:
        raise Conflict(str(e)) from None
    labels = [l.strip() for l in request.form["labels"].split(",") if l.strip()]
    unknown = [l for l in labels if l not in s.labels]
    if unknown:
        raise BadRequest(f"unknown label {unknown[0][:40]!r}; labels are {', '.join(s.labels)}")
    files = uploaded_files(request, s.classifier)
    if len(files) != 1:
        raise BadRequest(f"send one photo for feedback, not {len(files)}")
    name, data = files[0]
    load(s.classifier, name, data)  # a photo the model can read, or its 4xx
    try:
        saved, created = s.feedback.save(data, labels, s.labels)
    except FeedbackLabelsError as e:  # the model was switched meanwhile
        raise Conflict(str(e)) from None
    return jsonify(image=saved, labels=[l for l in s.labels if l in labels], created=created), 201 if created else 200
