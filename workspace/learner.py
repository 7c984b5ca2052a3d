"""The live model behind the labeller: per-label logistic heads on the backbone's embeddings, refit in the
background after each decision, and the queue of photos to label next.

The embeddings are quick mode's (model.quick.cached_embeddings: the shipped model's backbone, one pass a photo,
cached by content hash), projected to PROJECTED numbers by a fixed random matrix and standardised, so that a refit
of every head plus scoring 2000 photos stays well under a second. The functions here are pure (arrays in, arrays
out): the background loop (Learner) and benchmarks/active_learning.py run the same code.
"""

import dataclasses
import threading
from dataclasses import dataclass, field

import numpy as np

MIN_EXAMPLES = 2  # positives and negatives a label needs before its head is fit
THRESHOLD = 0.5  # a suggestion: the head's probability at or above this
C = 0.1  # inverse regularisation strength of every head (benchmarks/active_learning.py)
PROJECTED = 256  # embedding numbers after the random projection
RANDOM_SHARE = 0.2  # auto: the share of each batch drawn at random, so the quality estimate stays honest
POOL = 8  # auto: k-center picks among the POOL * k most uncertain photos
CV_FOLDS = 5


def project(x, seed=0):
    """(n, d) embeddings -> (n, PROJECTED) standardised features (a fixed Gaussian projection, then z-scores)."""
    rng = np.random.default_rng(seed)
    z = x @ rng.standard_normal((x.shape[1], PROJECTED)).astype(np.float32) / np.sqrt(PROJECTED)
    return (z - z.mean(0)) / (z.std(0) + 1e-6)


def fit_heads(z, y, known):
    """Per label, (coef, intercept) of a logistic regression on the labelled rows (`known`), or None while the
    label has fewer than MIN_EXAMPLES positives or negatives. y: (n, labels) 0/1."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small problems: BLAS threads only add contention (5x slower on a busy machine)
        return [_head(z, y[:, j], known) for j in range(y.shape[1])]


def _head(z, t_all, known):
    t = t_all[known]
    if min(t.sum(), len(t) - t.sum()) < MIN_EXAMPLES:
        return None
    return fit_one(z[known], t)


def fit_one(z, t):
    """(coef, intercept) of one label's logistic regression; a constant one (the base rate) for one class only."""
    from sklearn.linear_model import LogisticRegression

    if t.min() == t.max():
        return np.zeros(z.shape[1], np.float32), 20.0 if t[0] else -20.0
    fit = LogisticRegression(C=C, max_iter=300).fit(z, t)
    return fit.coef_[0].astype(np.float32), float(fit.intercept_[0])


def score(z, heads):
    """(n, labels) probabilities; NaN in the columns of labels without a head yet."""
    from scipy.special import expit

    probs = np.full((len(z), len(heads)), np.nan, np.float32)
    for j, head in enumerate(heads):
        if head is not None:
            probs[:, j] = expit(z @ head[0] + head[1])
    return probs


def uncertainty(probs):
    """Per photo, the sum over labels with a head of how near the probability is to the threshold (0..1 each)."""
    return np.nansum(1 - np.abs(probs - THRESHOLD) / max(THRESHOLD, 1 - THRESHOLD), axis=1)


def k_center(z, candidates, chosen_before, k):
    """Greedy k-center: up to k of `candidates`, each the farthest from the photos chosen before and so far."""
    if not len(candidates):
        return []
    if len(chosen_before):
        a, b = z[candidates], z[chosen_before]  # squared distances without an (n, m, d) array
        d = np.min((a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T, axis=1)
    else:
        d = np.full(len(candidates), np.inf)
    picked = []
    for _ in range(min(k, len(candidates))):
        i = int(np.argmax(d)) if np.isfinite(d).any() else 0
        picked.append(int(candidates[i]))
        d = np.minimum(d, ((z[candidates] - z[candidates[i]]) ** 2).sum(-1))
        d[i] = -1
    return picked


def nearest(z, positives, candidates):
    """`candidates` ordered by their similarity to the nearest of `positives` (cosine), most similar first."""
    u = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-9)
    similarity = (u[candidates] @ u[positives].T).max(axis=1)
    return candidates[np.argsort(-similarity, kind="stable")]


def choose(strategy, k, probs, z, unlabelled, labelled, rng, label=None, positives=(), random_share=RANDOM_SHARE):
    """Indices of up to k photos from `unlabelled` (an index array) to label next.

    strategy: "random"; "uncertain" (highest summed uncertainty); "auto" (RANDOM_SHARE at random, the rest by
    k-center among the POOL * k most uncertain); "likely" (`label`'s highest probability, or before its head
    exists the nearest neighbours of its `positives`); `random_share`: auto's random part. Photos without an embedding yet (z None) go at random."""
    if not len(unlabelled):
        return []
    if z is None or strategy == "random":
        return [int(i) for i in rng.permutation(unlabelled)[:k]]
    has_model = not np.isnan(probs).all()
    if strategy == "likely":
        if not np.isnan(probs[:, label]).all():
            return [int(i) for i in unlabelled[np.argsort(-probs[unlabelled, label], kind="stable")][:k]]
        return [int(i) for i in nearest(z, np.asarray(positives), unlabelled)[:k]]
    order = unlabelled[np.argsort(-uncertainty(probs[unlabelled]), kind="stable")] if has_model else None
    if strategy == "uncertain":
        return [int(i) for i in (order if has_model else rng.permutation(unlabelled))[:k]]
    n_random = int(round(k * random_share)) if has_model else 0
    pool = order[: POOL * k] if has_model else rng.permutation(unlabelled)[: POOL * k]
    picked = k_center(z, pool, labelled, k - n_random)
    rest = np.setdiff1d(unlabelled, picked)
    return picked + [int(i) for i in rng.permutation(rest)[:n_random]]


def cross_validated(z, y, folds=CV_FOLDS, seed=0):
    """{label index: average precision} of out-of-fold probabilities over the labelled rows (z, y), for labels
    with MIN_EXAMPLES positives and negatives; stratified folds, as many as the rarer class allows."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return {j: ap for j in range(y.shape[1]) if (ap := _cv_ap(z, y[:, j], folds, seed)) is not None}


def _cv_ap(z, t, folds, seed):
    """One label's cross-validated average precision, or None with too few positives or negatives."""
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedKFold

    n_folds = min(folds, int(t.sum()), int(len(t) - t.sum()))
    if n_folds < MIN_EXAMPLES:
        return None
    oof = np.zeros(len(t), np.float32)
    for train, test in StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(z, t):
        oof[test] = score(z[test], [fit_one(z[train], t[train])])[:, 0]
    return float(average_precision_score(t, oof))


def split_gaps(y, label_names):
    """The labels that model.train's split of these labelled rows (in labels.csv order) leaves without a positive
    or a negative in its training or its validation part: those it cannot fit or tune yet."""
    from model.data import split

    if len(y) < 10:
        return list(label_names)
    train, val, _ = split(len(y))
    return [
        name for j, name in enumerate(label_names) if any(len(set(y[part, j].tolist())) < 2 for part in (train, val))
    ]


@dataclass(frozen=True)
class LiveState:
    """What the live model knows at one moment; replaced whole after each refit, never changed."""

    decision: int = -1  # the store's last decision id this state was computed from
    embedded: int = 0  # photos with an embedding so far
    z: np.ndarray | None = None  # (n, PROJECTED) features, once every photo has its embedding
    probs: np.ndarray | None = None  # (n, labels), NaN where a label has no head
    average_precision: dict = field(default_factory=dict)  # {label: cross-validated AP}
    refit_ms: float | None = None
    error: str | None = None  # why the embeddings could not be computed


class Learner:
    """The background work for one dataset: embeddings (once), then a refit whenever the labels have changed.
    Requests read `state` and never wait for it."""

    def __init__(self, photo_paths, label_names, read_labels, last_decision, embed, poll_s=1.0):
        self.paths, self.label_names = photo_paths, label_names
        self.read_labels = read_labels  # () -> (last decision id, y (n, labels) 0/1, known (n,) bool)
        self.last_decision = last_decision  # () -> the store's last decision id: a cheap look for a change
        self.embed = embed  # [paths] -> (n, d) embeddings (cached)
        self.state = LiveState()
        self.x = None
        self._wake = threading.Event()
        self._poll_s = poll_s
        self._thread = threading.Thread(target=self._run, daemon=True, name="labeller-learner")
        self._thread.start()

    def poke(self):
        self._wake.set()

    def _run(self):
        try:
            self._embed_all()
        except Exception as e:  # a photo gone, a model that cannot load: say so on the panel
            self.state = LiveState(error=f"the embeddings could not be computed: {e}")
            return
        while True:
            self._wake.wait(self._poll_s)
            self._wake.clear()
            try:
                if self.last_decision() == self.state.decision:
                    continue
                decision, y, known = self.read_labels()
                if decision != self.state.decision:
                    self.state = self.refit(decision, y, known)
            except Exception as e:  # keep serving the last state; the panel says what went wrong
                self.state = dataclasses.replace(self.state, error=f"the live model could not be refit: {e}")

    def _embed_all(self, chunk=32):
        parts = []
        for start in range(0, len(self.paths), chunk):
            parts.append(self.embed(self.paths[start : start + chunk]))
            self.state = LiveState(embedded=min(start + chunk, len(self.paths)))
        self.x = project(np.concatenate(parts).astype(np.float32))

    def refit(self, decision, y, known):
        import time

        started = time.perf_counter()
        heads = fit_heads(self.x, y, known)
        probs = score(self.x, heads)
        refit_ms = (time.perf_counter() - started) * 1000
        ap = cross_validated(self.x[known], y[known])
        return LiveState(
            decision, len(self.paths), self.x, probs, {self.label_names[j]: v for j, v in ap.items()}, refit_ms
        )
