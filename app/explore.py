"""Exploring the model: similar dataset photos and the embedding map (/map, /api/map).

The dataset's embeddings come from `scenes().atlas` (model/atlas.py through the Classifier), computed in the
background after start-up: until they are ready, what needs them answers 503 with the progress."""
from flask import Blueprint, current_app, jsonify, render_template, request
from werkzeug.exceptions import BadRequest, NotFound, ServiceUnavailable


bp = Blueprint("explore", __name__)
MAX_SIMILAR = 50
SIMILAR_ON_CARDS = 6


def scenes():
    return current_app.extensions["scenes"]


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
    if not value.isdigit() or not 1 <= int(value) <= MAX_SIMILAR:
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

