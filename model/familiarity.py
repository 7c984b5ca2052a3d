""" "I don't know this photo": how close a photo is to anything the model was trained on.

A photo's familiarity is the cosine similarity of its pooled embedding to the nearest training photo's (the
same measure as the similar-photos search). The model directory keeps what that needs in `familiarity.npz`:
every training photo's embedding, unit length, in its 128 principal directions, in float16, and a threshold, the 1st percentile of the
validation photos' own familiarity. A photo below it is flagged unfamiliar: "unlike anything the model was
trained on"; the at-least-one rule then does not force a label on it.

Quick and full training write the file; for a model directory without one (the shipped model's was made this
way, from the MIML training split):

    python -m model.familiarity --model DIR [--data DIR]
"""

import argparse
import io
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILE = "familiarity.npz"
PERCENTILE = 1.0  # of the validation photos' familiarity: below it, a photo is unfamiliar
DIRECTIONS = 128  # principal directions of the training embeddings kept (see TrainingPhotos)


@dataclass(frozen=True)
class Familiarity:
    """One photo's: `score` the cosine similarity to the nearest training photo, `unfamiliar` below the threshold."""

    score: float
    unfamiliar: bool

    def as_dict(self):
        return {"score": self.score, "unfamiliar": self.unfamiliar}


def unit(embeddings):
    embeddings = np.asarray(embeddings, np.float32)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)


class TrainingPhotos:
    """The training photos' unit embeddings, in their principal directions, and the familiarity threshold:
    `judge` a photo's embedding.

    The full product (1280 photos x 2560 numbers for the shipped ensemble) reads 13 MB a request, about 2 ms
    here; in the training photos' `DIRECTIONS` principal directions (uncentred SVD) it is 0.25 ms, the file
    about 1 MB, and a score moves by at most 0.11 (benchmarks/familiarity.py). The threshold is computed in the
    same directions, so the flag is consistent with the scores."""

    def __init__(self, basis, train, threshold, percentile=PERCENTILE):
        self.basis = np.ascontiguousarray(basis, np.float32)  # (d, k); float32 in memory: float16 math is slow
        self.train = np.ascontiguousarray(train, np.float32)  # (n, k), the training photos' unit embeddings
        self.threshold = float(threshold)
        self.percentile = percentile

    @classmethod
    def fit(cls, train_embeddings, validation_embeddings, percentile=PERCENTILE, directions=DIRECTIONS):
        """From the training photos' embeddings; the threshold from the validation photos' (never the test's)."""
        train = unit(train_embeddings)
        _, _, vt = np.linalg.svd(train, full_matrices=False)
        basis = vt[:directions].T.astype(np.float16)  # what the file keeps, so the threshold matches it
        photos = cls(basis, (train @ basis.astype(np.float32)).astype(np.float16), -1.0, percentile)
        scores = photos.scores(validation_embeddings)
        photos.threshold = round(float(np.percentile(scores, percentile)), 4) if len(scores) else -1.0
        return photos

    def scores(self, embeddings):
        """(n, d) -> (n,) cosine similarity of each to its nearest training photo (in the principal directions)."""
        queries = unit(np.atleast_2d(embeddings))
        # einsum, not `@`: OpenBLAS would split these small products over threads that wait for the cores LiteRT
        # is using (model/atlas.py measured the same for the similar-photos search)
        return np.array(
            [float(np.einsum("nk,k->n", self.train, np.einsum("dk,d->k", self.basis, q)).max()) for q in queries],
            np.float32,
        )

    def judge(self, embeddings):
        """[Familiarity] for each embedding of (n, d)."""
        return [Familiarity(round(float(s), 4), bool(s < self.threshold)) for s in self.scores(embeddings)]

    def to_bytes(self):
        buf = io.BytesIO()
        np.savez(
            buf,
            basis=self.basis.astype(np.float16),
            train=self.train.astype(np.float16),
            threshold=self.threshold,
            percentile=self.percentile,
        )
        return buf.getvalue()

    @classmethod
    def read(cls, model_dir):
        """The model directory's familiarity.npz, or None when it has none (or a damaged one)."""
        try:
            with np.load(Path(model_dir) / FILE) as npz:
                return cls(npz["basis"], npz["train"], float(npz["threshold"]), float(npz["percentile"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None


def main(argv=None):
    """Compute familiarity.npz for a model directory from its own split of the dataset."""
    from model.cli import add_verbose_flag, quiet_tensorflow

    p = argparse.ArgumentParser(prog="python -m model.familiarity", description=main.__doc__)
    p.add_argument("--model", required=True, help="the model directory to add familiarity.npz to")
    p.add_argument("--data", help="the dataset it was trained on (default: $MIML_DATA)")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    from model.data import CONTRACT_SPLIT_SEED, DataError, load_dataset, split
    from model.modeldir import ModelDirError, read_model_dir, write_atomically

    try:
        read_model_dir(args.model)  # a bad model directory or dataset: one line before TensorFlow starts
        dataset = load_dataset(args.data)
        quiet_tensorflow(args.verbose)
        from model.inference import Classifier

        classifier = Classifier(args.model)
    except (ModelDirError, DataError) as e:
        sys.exit(f"error: {e}")
    if dataset.label_names != classifier.labels:
        sys.exit(f"error: {args.data or 'MIML_DATA'}: its labels are not the model's; give the model's own dataset")
    train_idx, val_idx, _ = split(len(dataset.images), classifier.card.split.seed or CONTRACT_SPLIT_SEED)
    train, val = (classifier.embeddings(dataset.load_photos(idx, classifier.size)) for idx in (train_idx, val_idx))
    photos = TrainingPhotos.fit(train, val)
    write_atomically(Path(args.model) / FILE, photos.to_bytes())
    print(f"wrote {Path(args.model) / FILE}: {len(train)} training photos, threshold {photos.threshold:.4f}")


if __name__ == "__main__":
    main()
