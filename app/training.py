"""Training from the browser and the model registry: datasets, jobs, models, switching and comparing.

    POST /api/datasets            a ZIP (multipart `file`; `labels`: a comma list, for photos without labels)
                                  -> 201 {"dataset", "photos", "labels", "labelled", "skipped"} (workspace.Workspace);
                                  409 while another import runs; 507 past the runs quota
    GET  /api/datasets            the datasets (--data first)
    DELETE /api/datasets/ID       delete an uploaded dataset (never --data or --feedback, nor one a job trains on)
    POST /api/jobs                {"dataset", "mode": "quick"|"full", "epochs"} -> 202 {"job"}; 409 while one runs
    GET  /api/jobs/ID             {"state", "progress", "message", "eta_s", "model", "curve", ...}
    DELETE /api/jobs/ID           cancel
    GET  /api/models              every model, the shipped one first
    POST /api/models/active       {"model": ID}: the model the pages use, in every process on the runs folder
    DELETE /api/models/ID         delete a trained model (never the shipped one, nor the one in use)
    /train, /models, /compare     the pages (their forms that change state carry a CSRF token)

Everything in the runs folder is `workspace.Registry`, whose store every process on the folder shares: each request
first reads the store's version (`follow_the_store`), and when a switch or a model deletion moved it, serves the
store's active model and forgets deleted ones. Loaded models are kept in memory, at most MODELS_IN_MEMORY, the
least recently used going first.
"""

import dataclasses
import threading
from pathlib import Path
from collections import OrderedDict

from flask import Blueprint, Response, abort, current_app, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, HTTPException, default_exceptions

from app import render
from app.scenes import scenes
from model.inference import Classifier, ImageError
from workspace import RegistryError

bp = Blueprint("training", __name__)
MODELS_IN_MEMORY = 3
SHIPPED_ID = "shipped"
MAX_DATASET_BYTES = 200 * 1024 * 1024  # one uploaded ZIP
COMPARE_GALLERY = 60  # disagreements shown


class InsufficientStorage(HTTPException):
    """507: the runs folder's quota is used up (werkzeug has no class for it)."""

    code = 507
    name = "Insufficient Storage"


STATUSES = {**default_exceptions, 507: InsufficientStorage}


class LoadedModels:
    """Classifiers by model id, at most `bound` in memory; the least recently used goes first."""

    def __init__(self, registry, runtime, workers, bound=MODELS_IN_MEMORY):
        """`runtime`: (runtime, precision) as model.inference.choose_runtime takes them."""
        self.registry, self.runtime, self.workers, self.bound = registry, runtime, workers, bound
        self._loaded = OrderedDict()
        self._lock = threading.Lock()  # loads one model at a time: a second request for it waits, then shares it
        self._preparing = set()  # ids being loaded and warmed up in the background (prepare)
        self._preparing_lock = threading.Lock()

    def put(self, model_id, classifier):
        with self._lock:
            self._keep(model_id, classifier)

    def _keep(self, model_id, classifier):
        self._loaded[model_id] = classifier
        self._loaded.move_to_end(model_id)
        while len(self._loaded) > self.bound:
            self._loaded.popitem(last=False)

    def get(self, model_id):
        """The loaded model `model_id`; RegistryError (404) for an unknown one."""
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
            path = self.registry.check_model(model_id)
            runtime, precision = self.runtime
            try:
                classifier = Classifier(path, runtime=runtime, precision=precision, workers=self.workers)
            except Exception as e:  # deleted or damaged while it loads: Keras, LiteRT and OpenVINO raise many types
                message = str(e).replace(str(path), model_id)
                raise RegistryError(f"model {model_id!r} cannot be loaded: {message}", 409) from None
            self._keep(model_id, classifier)
            return classifier

    def prepare(self, model_id):
        """True when `model_id` is loaded and warmed up; else start that in the background (once) and say False."""
        with self._preparing_lock:
            if model_id in self._preparing:
                return False
            if model_id in self._loaded:
                return True
            self._preparing.add(model_id)
        threading.Thread(target=self._prepare, args=(model_id,), name=f"prepare {model_id}", daemon=True).start()
        return False

    def _prepare(self, model_id):
        try:
            self.get(model_id).warm_up()
        except Exception:  # a request for the model will say what is wrong with it
            pass
        finally:
            with self._preparing_lock:
                self._preparing.discard(model_id)

    def forget(self, model_id):
        with self._lock:
            self._loaded.pop(model_id, None)

    def ids(self):
        with self._lock:
            return list(self._loaded)


def init(app, registry, served, runtime, workers):
    """Register the blueprint and what it keeps: the registry and the loaded models, among them the served
    one, registry id `served` (None when --model serves a directory of its own until a switch)."""
    app.extensions["registry"] = registry
    app.extensions["models"] = LoadedModels(registry, runtime, workers)
    app.extensions["active_model"] = served
    app.extensions["store"] = {"version": None, "active": registry.active(), "lock": threading.Lock()}
    if served:
        app.extensions["models"].put(served, app.extensions["scenes"].classifier)
    app.config.update(MAX_DATASET_BYTES=MAX_DATASET_BYTES, TRAINING=True)  # TRAINING: the nav shows Train and Models
    app.register_blueprint(bp)
    app.before_request(follow_the_store)

    @app.errorhandler(RegistryError)
    def registry_error(e):
        return app.handle_http_exception(STATUSES[e.status](str(e)))


def registry():
    return current_app.extensions["registry"]


def models():
    return current_app.extensions["models"]


def requested_classifier():
    """The model of `?model=ID` when given (400 without a runs folder, 404 for an unknown id), else the one in use."""
    model_id = request.args.get("model")
    if model_id is None:
        return scenes().classifier
    if "models" not in current_app.extensions:
        raise BadRequest("this server has no runs folder, so ?model= has nothing to choose from")
    return models().get(model_id)


def switch(model_id):
    """Serve `model_id` on every page of every process from now on, and remember it across restarts."""
    classifier = models().get(model_id)
    registry().set_active(model_id)
    serve(model_id, classifier)


def serve(model_id, classifier):
    from app import label_mismatch

    scenes().use(classifier)
    current_app.extensions["active_model"] = model_id
    current_app.config["LABEL_MISMATCH"] = label_mismatch(scenes())


def follow_the_store():
    """Before each request: when the store's version has moved (a switch or a model deletion, in any process),
    forget the models that were deleted and serve the store's active model. A process given --model keeps serving
    it until a switch is made."""
    seen, version = current_app.extensions["store"], registry().version()
    if version == seen["version"]:
        return
    with seen["lock"]:
        if version == seen["version"]:
            return
        existing = registry().model_ids()
        for model_id in models().ids():
            if model_id not in existing:
                models().forget(model_id)
        active, served = registry().active(), current_app.extensions["active_model"]
        if active != served and (served is not None or active != seen["active"]):
            try:
                serve(active, models().get(active))
            except RegistryError:  # damaged since it was chosen: the next request tries again
                return
        seen.update(version=version, active=active)


def json_body():
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise BadRequest("the JSON is nested too deeply; send a flat JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object (Content-Type: application/json)")
    return body


# --- API -----------------------------------------------------------------------------------------
@bp.post("/api/datasets")
def upload_dataset():
    request.max_content_length = current_app.config["MAX_DATASET_BYTES"]
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise BadRequest("no ZIP received: send it in the multipart form field 'file'")
    created = current_app.extensions["workspace"].create_dataset(
        upload.stream, upload.filename, request.form.get("labels")
    )
    return jsonify(dataclasses.asdict(created)), 201


@bp.get("/api/datasets")
def list_datasets():
    return jsonify(registry().datasets())


@bp.delete("/api/datasets/<dataset_id>")
def delete_dataset(dataset_id):
    registry().delete_dataset(dataset_id)
    return jsonify(deleted=dataset_id)


def confirmed_form(what):
    """The form's fields, once its CSRF token and its 'confirm' box are checked (400 otherwise)."""
    current_app.extensions["csrf"].protect()
    if request.form.get("confirm") != "yes":
        raise BadRequest(f"deleting {what} cannot be undone: tick the box that confirms it")
    return request.form


@bp.post("/datasets/delete")
def delete_dataset_form():
    registry().delete_dataset(confirmed_form("a dataset").get("dataset", ""))
    return redirect(url_for("training.train_page"), 303)


@bp.post("/api/jobs")
def start_job():
    body = json_body()
    unknown = set(body) - {"dataset", "mode", "epochs", "backbone"}
    if unknown:
        raise BadRequest(
            f"unknown field {sorted(unknown)[0]!r}; send dataset, mode, and epochs (full mode) or backbone (quick mode)"
        )
    if "dataset" not in body or "mode" not in body:
        raise BadRequest("send 'dataset' (an id from GET /api/datasets) and 'mode' ('quick' or 'full')")
    if isinstance(body["dataset"], str):
        current_app.extensions["workspace"].write_labels_csv(body["dataset"])  # the labelled photos, from the store
    job = registry().start_job(body["dataset"], body["mode"], body.get("epochs"), body.get("backbone"))
    return jsonify(job=job), 202, {"Location": url_for("training.job_status", job_id=job)}


@bp.get("/api/jobs/<job_id>")
def job_status(job_id):
    """The job's status; once it is done, "ready": whether its model is loaded here for serving (asking starts
    that in the background, so the model's first use does not wait for it)."""
    status = registry().job(job_id)
    answer = status.to_json()
    if status.state == "done" and status.model:
        answer["ready"] = models().prepare(status.model)
    return jsonify(answer)


@bp.delete("/api/jobs/<job_id>")
def cancel_job(job_id):
    return jsonify(registry().cancel_job(job_id).to_json())


@bp.get("/api/models")
def list_models():
    active = current_app.extensions["active_model"]
    return jsonify([{**m, "active": m["id"] == active} for m in registry().models()])


@bp.post("/api/models/active")
def use_model():
    model_id = json_body().get("model")
    if not isinstance(model_id, str):
        raise BadRequest('send {"model": ID} with an id from GET /api/models')
    switch(model_id)
    return jsonify(active=model_id)


def delete(model_id):
    registry().delete_model(model_id)
    models().forget(model_id)


@bp.delete("/api/models/<model_id>")
def delete_model(model_id):
    delete(model_id)
    return jsonify(deleted=model_id)


# --- pages ---------------------------------------------------------------------------------------
@bp.get("/train")
def train_page():
    live = registry().live_job()
    return render_template(
        "train.html",
        datasets=registry().datasets(),
        uploads=[d for d in registry().datasets() if d["dataset"] not in registry().folders],
        job=live,
        timing={mode: registry().timing(mode) for mode in ("quick", "full")},
        max_mb=current_app.config["MAX_DATASET_BYTES"] // (1024 * 1024),
    )


def compatible_pairs(listed):
    """[(a, b)] of model ids with the same labels, the ones the compare form offers: pairs of trained models
    first, newest first (the list's order), then pairs with the shipped model."""
    pairs = [(a["id"], b["id"]) for i, a in enumerate(listed) for b in listed[i + 1 :] if a["labels"] == b["labels"]]
    return sorted(pairs, key=lambda pair: SHIPPED_ID in pair)


@bp.get("/models")
def models_page():
    unreadable = []
    listed = registry().models(unreadable)
    return render_template(
        "models.html",
        models=listed,
        pairs=compatible_pairs(listed),
        unreadable=unreadable,
        active=current_app.extensions["active_model"],
        loaded=models().ids(),
        bound=MODELS_IN_MEMORY,
    )


@bp.post("/models/use")
def use_model_form():
    current_app.extensions["csrf"].protect()
    switch(request.form.get("model", ""))
    return redirect(url_for("training.models_page"), 303)


@bp.post("/models/delete")
def delete_model_form():
    delete(confirmed_form("a model").get("model", ""))
    return redirect(url_for("training.models_page"), 303)


def shared_test_photos(a, b):
    """(names, truth, (probabilities of a, of b)) over the test photos both models stored, same name and truth."""
    names_a, truth_a, probs_a = a.test_predictions()
    names_b, truth_b, probs_b = b.test_predictions()
    where_b = {name: i for i, name in enumerate(names_b)}
    pairs = [
        (i, where_b[n]) for i, n in enumerate(names_a) if n in where_b and (truth_a[i] == truth_b[where_b[n]]).all()
    ]
    ia, ib = [p[0] for p in pairs], [p[1] for p in pairs]
    return [names_a[i] for i in ia], truth_a[ia], (probs_a[ia], probs_b[ib])


@bp.get("/compare")
def compare():
    ids = request.args.get("pair", "").split()[:2] or [request.args.get("a", ""), request.args.get("b", "")]
    if not all(ids):
        raise BadRequest("choose two models: /compare?a=ID&b=ID (ids from the Models page)")
    a, b = (models().get(i) for i in ids)
    if a.labels != b.labels:
        raise BadRequest(
            f"the models have different labels ({', '.join(a.labels)} against {', '.join(b.labels)}): "
            "only models with the same labels can be compared"
        )
    names, truth, probs = shared_test_photos(a, b)
    if not names:
        raise BadRequest(
            "the two models share no test photos (same file name and true labels), so there is "
            "nothing to compare them on"
        )
    metrics = [a.evaluate(truth, probs[0]), b.evaluate(truth, probs[1])]
    decided = [a.decide(probs[0]), b.decide(probs[1])]
    differ = [i for i in range(len(names)) if (decided[0][i] != decided[1][i]).any()]

    def chosen(flags):
        return [l for l, on in zip(a.labels, flags) if on]

    photos = [
        {
            "name": names[i],
            "truth": chosen(truth[i]),
            "a": chosen(decided[0][i]),
            "b": chosen(decided[1][i]),
            "a_right": (decided[0][i] == truth[i]).all(),
            "b_right": (decided[1][i] == truth[i]).all(),
        }
        for i in differ[:COMPARE_GALLERY]
    ]
    return render_template(
        "compare.html",
        ids=ids,
        metrics=metrics,
        headline=a.HEADLINE,
        n=len(names),
        differ=len(differ),
        photos=photos,
        labels=a.labels,
    )


@bp.get("/compare/thumb/<model_id>/<image>")
def compare_thumb(model_id, image):
    """A thumbnail of one of the model's test photos, read from the dataset it was trained on."""
    c = models().get(model_id)
    if image not in c.test_predictions()[0]:
        abort(404, description=f"{image!r} is not one of model {model_id!r}'s test photos")
    try:
        jpeg = render.thumbnail(c, Path(c.card.training.dataset or "") / "original" / image)
    except ImageError as e:
        abort(404, description=f"{image}: cannot be read from the model's dataset ({e})")
    except OSError as e:  # the message without the folder's path
        abort(404, description=f"{image}: cannot be read from the model's dataset ({e.strerror or 'unreadable'})")
    return Response(jpeg, mimetype="image/jpeg", headers={"Cache-Control": "max-age=3600"})
