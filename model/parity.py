"""The parity gate: a runtime or precision serves only if it gives what the Keras float32 model gives.

On the contract test photos, against Keras float32 (docs/runtime.md):
- at most 2 of the label decisions (photos x labels) differ;
- mAP and Hamming loss within 0.002;
- the top-5 similar photos (cosine of the embeddings, among the same photos) overlap at least 95%;
- the class maps correlate at least 0.99 (mean over photos of the correlation of their five maps).
"""

from dataclasses import dataclass

import numpy as np

MAX_CHANGED, MAX_METRIC_DIFF, MIN_OVERLAP, MIN_CORRELATION = 2, 0.002, 0.95, 0.99
TOP_K = 5


@dataclass
class Outputs:
    """What the gate compares of one classifier on the photos: probabilities, embeddings, class maps."""

    probabilities: np.ndarray  # (n, labels)
    embeddings: np.ndarray  # (n, d)
    cams: np.ndarray  # (n, labels, h, w)


@dataclass
class Parity:
    decisions_changed: int
    decisions: int
    map_diff: float
    hamming_diff: float
    similar_overlap: float  # mean fraction of the top-5 similar photos kept
    cam_correlation: float  # mean over photos
    max_probability_diff: float

    @property
    def passes(self):
        return (
            self.decisions_changed <= MAX_CHANGED
            and self.map_diff <= MAX_METRIC_DIFF
            and self.hamming_diff <= MAX_METRIC_DIFF
            and self.similar_overlap >= MIN_OVERLAP
            and self.cam_correlation >= MIN_CORRELATION
        )


def outputs(classifier, pixels, batch_size=32):
    """Outputs of `classifier` for uint8 photos (n, size, size, 3), `batch_size` a pass."""
    probs, embeddings, cams = [], [], []
    for i in range(0, len(pixels), batch_size):
        features, e, p = classifier.forward(pixels[i : i + batch_size])
        probs.append(p)
        embeddings.append(e)
        cams += [classifier.class_maps(x, f[None]) for x, f in zip(pixels[i : i + batch_size], features)]
    return Outputs(np.concatenate(probs), np.concatenate(embeddings), np.stack(cams))


def top_similar(embeddings, k=TOP_K):
    """(n, k) indices of each photo's k most similar others by cosine."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def cam_correlation(a, b):
    """Mean over photos of the Pearson correlation of their class maps (all labels' maps together)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    return float(
        np.mean((a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12))
    )


def compare(classifier, truth, reference, candidate):
    """Parity of `candidate` Outputs against `reference` (Keras float32) under `classifier`'s thresholds."""
    ref_metrics, got_metrics = (
        classifier.evaluate(truth, reference.probabilities),
        classifier.evaluate(truth, candidate.probabilities),
    )
    ref_top, got_top = top_similar(reference.embeddings), top_similar(candidate.embeddings)
    overlap = np.mean([len(set(r) & set(g)) / TOP_K for r, g in zip(ref_top, got_top)])
    return Parity(
        decisions_changed=int(
            (classifier.decide(reference.probabilities) != classifier.decide(candidate.probabilities)).sum()
        ),
        decisions=reference.probabilities.size,
        map_diff=abs(ref_metrics["map"] - got_metrics["map"]),
        hamming_diff=abs(ref_metrics["hamming_loss"] - got_metrics["hamming_loss"]),
        similar_overlap=float(overlap),
        cam_correlation=cam_correlation(reference.cams, candidate.cams),
        max_probability_diff=float(np.abs(reference.probabilities - candidate.probabilities).max()),
    )
