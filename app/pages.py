"""HTML pages: upload, photo detail with layer activations, test-set gallery, evaluation, model."""

import base64
import binascii
import re
from collections import Counter
from pathlib import Path

import numpy as np
from flask import Blueprint, Response, abort, current_app, render_template, request
from PIL import Image
from sklearn.metrics import precision_recall_curve
from werkzeug.exceptions import BadRequest, HTTPException, UnprocessableEntity

from app import render
from app.explore import similar_on_card
from app.scenes import scenes
from app.uploads import analyse, uploaded_files
from model.inference import ImageError

bp = Blueprint("pages", __name__)
PER_PAGE = 40
SHOW = {
    "all": "all photos",
    "fp": "false positives",
    "fn": "false negatives",
    "wrong": "exact-match failures",
    "right": "exact-match successes",
}
SORT = {"id": "photo id", "error": "largest error first", "confidence": "most confident first"}
METRIC_NAMES = {
    "map": "mAP",
    "one_error": "one-error",
    "hamming_loss": "Hamming loss",
    "micro_f1": "micro F1",
    "macro_f1": "macro F1",
    "samples_f1": "samples F1",
}


@bp.app_template_filter("metric_name")
def metric_name(key):
    """How a page names a metric: mAP (not "map", which reads like the Map page), one-error."""
    return METRIC_NAMES.get(key, key.replace("_", " "))


def card(name, a, truth=None, photo_id=None, upload_index=None):
    """Everything a result card shows for one photo's Analysis `a`: `truth` and `photo_id` for a dataset photo,
    `upload_index` for the position of an uploaded one in its request (the feedback form posts it again)."""
    s = scenes()
    return {
        "name": name,
        "photo_src": render.data_uri(render.to_jpeg(a.image), "image/jpeg"),
        "bars": [
            {
                "label": l,
                "p": a.probabilities[l],
                "threshold": s.thresholds[l],
                "on": l in a.predicted,
                "truth": None if truth is None else bool(truth[i]),
            }
            for i, l in enumerate(s.labels)
        ],
        "predicted": a.predicted,
        "familiarity": a.familiarity,
        "familiar_above": s.classifier.training_photos and s.classifier.training_photos.threshold,
        "cams": [{"label": l, "src": render.data_uri(render.heatmap_overlay(a.cams[l]))} for l in s.labels],
        "pixels": base64.b64encode(render.to_lossless_webp(Image.fromarray(a.pixels))).decode(),
        "model_input": a.pixels,
        "similar": similar_on_card(a.embedding, exclude=None if photo_id is None else photo_id - 1),
        "upload_index": upload_index,
    }


@bp.get("/")
def index():
    return render_template("index.html", cards=[], errors=[])


@bp.post("/")
def upload():
    cards, errors, status = [], [], 200
    for i, (name, data) in enumerate(uploaded_files(request, scenes().classifier)):  # one photo decoded at a time
        try:
            cards.append(card(name, analyse(scenes().classifier, name, data), upload_index=i))
        except HTTPException as e:
            errors.append(e.description)
            status = e.code
    status = 200 if cards else status
    template = "_results.html" if request.headers.get("X-Requested-With") == "fetch" else "index.html"
    return render_template(template, cards=cards, errors=errors), status


@bp.get("/batch")
def batch():
    """Many photos from a folder or a ZIP, predicted from the browser through /api/predict (static/batch.js)."""
    return render_template(
        "batch.html", per_request=current_app.config["MAX_FILES"], max_bytes=current_app.config["MAX_CONTENT_LENGTH"]
    )


def layer_examples(layers):
    """(early, late): convolutional layers the hint names, ones this model has: the stem's activations (member 1's
    before member 2's in an ensemble) and the last feature map, where Grad-CAM reads."""
    spatial = [name for name, _, is_spatial in layers if is_spatial]
    early = sorted(n for n in spatial if n.endswith("stem_activation")) or spatial[:1]
    late = [n for n in spatial if n == "top_activation"] or [n for n in spatial if n.endswith("top_activation")]
    return early[:2], (late or spatial[-1:])[:1]


def layer_view(pixels, layer):
    """The layer list, and the channel grid of `layer` (404 for an unknown one)."""
    s = scenes()
    layers = s.classifier.layers()
    if not layer:
        s.classifier.prepare_layer_browser()  # its Keras model loads while the page is read
        return layers, None
    if layer not in {name for name, _, spatial in layers if spatial}:
        abort(404, description=f"no convolutional layer named {layer!r} in this model")
    png, channels, total = render.channel_grid(s.classifier.activations(pixels, layer))
    return layers, {"name": layer, "src": render.data_uri(png), "channels": channels, "total": total}


@bp.get("/photo/<int:photo_id>")
def photo(photo_id):
    s = scenes()
    path = s.photo_path(photo_id)
    if path is None:
        abort(404, description=f"no photo {photo_id}" + ("" if s.dataset else ": no dataset is loaded"))
    name = s.dataset.images[photo_id - 1]
    try:
        a = s.classifier.analyse(path)
    except ImageError as e:
        raise UnprocessableEntity(f"dataset photo {name} cannot be read: {e}") from None
    truth = s.dataset.labels[photo_id - 1] if s.dataset.label_names == s.labels else None  # only in the model's labels
    c = card(name, a, truth, photo_id=photo_id)
    layers, grid = layer_view(c["model_input"], request.args.get("layer"))
    in_test = any(t.photo_id == photo_id for t in s.test_photos)
    return render_template(
        "photo.html",
        card=c,
        layers=layers,
        grid=grid,
        photo_id=photo_id,
        in_test=in_test,
        examples=layer_examples(layers),
    )


@bp.post("/inspect")
def inspect():
    """Detail page for an uploaded photo, sent back as the model input (lossless WebP) the upload page embedded."""
    s = scenes()
    malformed = BadRequest("the photo to inspect is missing or malformed; upload it again from the start page")
    try:
        raw = base64.b64decode(request.form.get("pixels", ""), validate=True)
        if raw[:4] != b"RIFF" or raw[8:12] != b"WEBP":  # what the upload page embeds; anything else is not analysed
            raise malformed
        a = s.classifier.analyse(raw)
    except (binascii.Error, ImageError):
        raise malformed from None
    if a.size != (s.classifier.size,) * 2:
        raise malformed
    name = request.form.get("name", "photo")[:80]
    c = card(name, a)
    layers, grid = layer_view(c["model_input"], request.form.get("layer"))
    return render_template(
        "photo.html", card=c, layers=layers, grid=grid, photo_id=None, in_test=False, examples=layer_examples(layers)
    )


@bp.get("/photo/<int:photo_id>/thumb.jpg")
def thumb(photo_id):
    if scenes().photo_path(photo_id) is None:
        abort(404, description=f"no photo {photo_id}")
    try:
        jpeg = scenes().thumbnail(photo_id)
    except ImageError as e:
        raise UnprocessableEntity(f"dataset photo {photo_id} cannot be read: {e}") from None
    return Response(jpeg, mimetype="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})


def choose(name, options, default):
    value = request.args.get(name, default)
    if value not in options:
        abort(400, description=f"{name} must be one of: {', '.join(options)}")
    return value


def label_set_arg(name):
    """The exact label set asked for by query parameter `name` as 0/1 flags (labels separated by spaces, '+' or
    commas; an empty value is the empty set), or None when the parameter is absent. 400 for an unknown label."""
    value = request.args.get(name)
    if value is None:
        return None
    labels = scenes().labels
    chosen = [l for l in re.split(r"[\s,+]+", value) if l]
    unknown = [l for l in chosen if l not in labels]
    if unknown:
        abort(
            400,
            description=f"{name}: unknown label {unknown[0][:40]!r}; labels are {', '.join(labels)} "
            f"(an empty {name}= means no label)",
        )
    return np.array([l in chosen for l in labels], dtype=np.uint8)


def label_set(labels, flags):
    """The names of the labels whose flag is set, in label order."""
    return tuple(l for l, on in zip(labels, flags) if on)


def label_set_confusions(labels, truth, predicted):
    """[(true label set, predicted label set, photos)] over the photos whose predicted set is not their true one,
    most frequent first (ties in label order)."""
    counts = Counter((label_set(labels, t), label_set(labels, p)) for t, p in zip(truth, predicted) if (t != p).any())
    return [(t, p, n) for (t, p), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


@bp.get("/gallery")
def gallery():
    s = scenes()
    if s.dataset is None:
        return render_template("gallery.html", photos=None)
    label = choose("label", [""] + s.labels, "")
    show = choose("show", list(SHOW), "all")
    sort = choose("sort", list(SORT), "id")
    if show in ("fp", "fn") and not label:
        abort(400, description="choose a label to see its false positives or false negatives")
    j = s.labels.index(label) if label else None
    exact = {"truth": label_set_arg("truth"), "predicted": label_set_arg("predicted")}

    def keep(t):
        if any(flags is not None and not np.array_equal(getattr(t, key), flags) for key, flags in exact.items()):
            return False
        involved = j is None or t.truth[j] or t.predicted[j]
        return {
            "all": involved,
            "fp": j is not None and t.predicted[j] and not t.truth[j],
            "fn": j is not None and t.truth[j] and not t.predicted[j],
            "wrong": involved and t.errors().any(),
            "right": involved and not t.errors().any(),
        }[show]

    photos = [t for t in s.test_photos if keep(t)]
    if sort == "error":
        photos.sort(key=lambda t: -float(np.abs(t.truth - t.probs).sum()))
    elif sort == "confidence":
        photos.sort(key=lambda t: -float(t.probs[j] if j is not None else t.probs.max()))
    pages = max(1, -(-len(photos) // PER_PAGE))
    try:
        page = int(request.args.get("page", 1))
    except ValueError:
        abort(400, description="page must be a number")
    if not 1 <= page <= pages:
        abort(404, description=f"page {page} does not exist; there are {pages}")
    shown = photos[(page - 1) * PER_PAGE : page * PER_PAGE]
    sets = {key: " ".join(label_set(s.labels, flags)) for key, flags in exact.items() if flags is not None}
    return render_template(
        "gallery.html",
        photos=shown,
        count=len(photos),
        total=len(s.test_photos),
        page=page,
        pages=pages,
        label=label,
        show=show,
        sort=sort,
        SHOW=SHOW,
        SORT=SORT,
        sets=sets,
        query={"label": label, "show": show, "sort": sort, **sets},
    )


def pr_curve_points(truth, probs, width=240, height=180):
    """SVG polyline points of one label's precision-recall curve (recall across, precision up)."""
    precision, recall, _ = precision_recall_curve(truth, probs)
    return " ".join(f"{r * width:.1f},{(1 - p) * height:.1f}" for p, r in zip(precision, recall))


@bp.get("/evaluation")
def evaluation():
    s = scenes()
    info = s.classifier
    names, truth, probs = info.test_predictions()
    confusions = label_set_confusions(s.labels, truth, info.decide(probs)) if len(truth) else []
    curves = {l: pr_curve_points(truth[:, j], probs[:, j]) for j, l in enumerate(s.labels) if truth[:, j].any()}
    data = {
        "labels": s.labels,
        "thresholds": [s.thresholds[l] for l in s.labels],
        "at_least_one": info.at_least_one,
        "truth": truth.tolist(),
        "probs": np.round(probs, 5).tolist(),
    }
    return render_template(
        "evaluation.html",
        card=info.card,
        headline=info.HEADLINE,
        curves=curves,
        data=data,
        confusions=confusions,
        mismatched=sum(n for _, _, n in confusions),
        gallery=s.dataset is not None,
    )


MIML_LABELS = ["desert", "mountains", "sea", "sunset", "trees"]
# Published results on MIML (lower is better but for exact match and average precision); None: not reported.
PUBLISHED = [
    {
        "model": "MLDF (Yang et al., ECAI 2020): deep forest on hand-crafted features",
        "kind": "5-fold CV",
        "protocol": "5-fold cross-validation over all 2000 photos",
        "hamming_loss": 0.148,
        "exact_match": None,
        "one_error": 0.239,
        "coverage": 0.159,
        "ranking_loss": 0.129,
        "average_precision": 0.842,
    },
    {
        "model": "Best honest pixel-trained CNN we know of",
        "kind": "other split",
        "protocol": "held-out test photos as published, not this split",
        "hamming_loss": 0.1265,
        "exact_match": 0.585,
    },
    {
        "model": "The original project's 4-layer CNN, as it reported",
        "kind": "single split",
        "protocol": "this 400-photo test split, but thresholds and checkpoint tuned on it",
        "hamming_loss": 0.1395,
        "exact_match": 0.54,
    },
]
COMPARED = {
    "hamming_loss": ("Hamming loss", "lower"),
    "exact_match": ("exact match", "higher"),
    "one_error": ("one-error", "lower"),
    "coverage": ("coverage / labels", "lower"),
    "ranking_loss": ("ranking loss", "lower"),
    "average_precision": ("average precision", "higher"),
}


def our_comparison_row(classifier, miml_split):
    """The model's test metrics in the published results' terms: coverage per label (MIML's coverage, i.e.
    sklearn's coverage_error - 1, over the number of labels) and example-based average precision (LRAP), both
    from model.metrics: stored in metrics.json, or computed from the stored test predictions for an older one."""
    card = classifier.card
    test = card.test
    extra = {k: test.get(k) for k in ("coverage_normalised", "average_precision")}
    if extra["average_precision"] is None:  # a model directory written before metrics.json held these
        _, truth, probs = classifier.test_predictions()
        if len(truth):
            extra = {k: classifier.evaluate(truth, probs)[k] for k in extra}
    seed = card.split.seed
    return {
        "model": f"{card.training.architecture or 'this model'} (this model)",
        "kind": "single split",
        "protocol": f"the {test['n_images']}-photo test split (seed {seed}"
        f"{': the contract split' if seed == classifier.CONTRACT_SPLIT_SEED and miml_split else ''}), thresholds "
        "and checkpoint from validation",
        **{k: test[k] for k in ("hamming_loss", "exact_match", "one_error", "ranking_loss")},
        "coverage": extra["coverage_normalised"] or test["coverage"] / len(classifier.labels),
        "average_precision": extra["average_precision"],
    }


def crossval_row(classifier):
    """The model's training recipe under the literature's protocol (model.crossval), when its metrics.json
    records one; else None."""
    cv = classifier.card.crossval
    if not cv:
        return None
    mean = {k: v["mean"] for k, v in cv.metrics.items()}
    return {
        "model": f"{cv.architecture}, {cv.augment} augmentation: the training recipe, cross-validated",
        "kind": f"{cv.folds}-fold CV",
        "protocol": f"{cv.folds}-fold cross-validation over all {cv.test_photos} photos, stratified by label "
        "set; checkpoint and thresholds from a validation part of each fold's training photos",
        **{k: mean.get(k) for k in ("hamming_loss", "exact_match", "one_error", "ranking_loss", "average_precision")},
        "coverage": mean.get("coverage_normalised"),
    }


def trained_on(classifier):
    """What the model says of its own dataset: {"name": the folder's name (None if unrecorded), "photos": its
    split's photos, "miml": whether it is MIML itself (its labels and 2000 photos)}."""
    t, split = classifier.card.training, classifier.card.split
    path = t.dataset or next((m.dataset for m in t.members or [] if m.dataset), None)
    photos = sum(n or 0 for n in (split.train, split.validation, split.test))
    return {
        "name": Path(path).name if path else None,
        "photos": photos,
        "miml": classifier.labels == MIML_LABELS and photos == 2000,
    }


@bp.get("/model")
def model_page():
    s = scenes()
    own = trained_on(s.classifier)
    ours = [our_comparison_row(s.classifier, own["miml"]), crossval_row(s.classifier)]
    ours = [row for row in ours if row]
    backbone = s.classifier.card.training.backbone
    return render_template(
        "model.html",
        info=s.classifier,
        layers=s.classifier.layers(),
        size=s.classifier.size,
        dataset=s.dataset,
        trained_on=own,
        backbone=backbone and Path(backbone).name,  # a model id: older quick models recorded the folder's path
        literature=s.labels == MIML_LABELS,
        rows=ours + PUBLISHED,
        ours=len(ours),
        compared=COMPARED,
        curve=s.classifier.training_curve_png() is not None,
    )


@bp.get("/model/training_curve.png")
def training_curve():
    png = scenes().classifier.training_curve_png()
    if png is None:
        abort(404, description="this model directory has no training_curve.png")
    return Response(png, mimetype="image/png", headers={"Cache-Control": "max-age=3600"})
