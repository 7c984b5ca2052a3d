"""model.ensemble: trained models joined into one network, its logits the mean of theirs."""

import json

import numpy as np
import pytest
from scipy.special import expit, logit

from model.inference import Classifier
from tests.helpers import run


@pytest.fixture(scope="module")
def second_member(tiny_model, tmp_path_factory):
    """A second member on the same split: the tiny model's directory with every weight scaled by its own seeded
    factor exp(0.1 N(0, 1)) (signs and batch-norm variances kept), another network as another seed's run would be;
    its card is the tiny model's (the ensemble tunes and scores itself). What this module checks is the joining
    arithmetic, which needs two different networks, not a second model.train run."""
    import shutil

    import keras

    out = tmp_path_factory.mktemp("member") / "model"
    shutil.copytree(tiny_model, out)
    model = keras.models.load_model(out / "model.keras", compile=False)
    rng = np.random.default_rng(1)
    model.set_weights([w * np.exp(0.1 * rng.standard_normal(w.shape)).astype(w.dtype) for w in model.get_weights()])
    model.save(out / "model.keras")
    return out


@pytest.fixture(scope="module")
def joined(tiny_model, second_member, tiny_dataset, tmp_path_factory):
    from model.ensemble import ensemble

    out = tmp_path_factory.mktemp("ensemble") / "ens-ab"
    ensemble([tiny_model, second_member], tiny_dataset, "none", out)
    return out


@pytest.mark.slow  # the session's tiny model trains
def test_the_ensemble_is_the_mean_of_its_members_logits_in_one_network(joined, tiny_model, second_member, tiny_dataset):
    photos = sorted((tiny_dataset / "original").iterdir())[:6]
    # Keras: float32, exact sums, and no conversion (each OpenVINO one cost a Keras -> SavedModel -> IR export);
    # the runtimes' agreement with Keras on an ensemble is tests/test_parity.py's
    members = [Classifier(m, tta="none", runtime="keras") for m in (tiny_model, second_member)]
    both = Classifier(joined, runtime="keras")
    pixels = np.stack([both.load(p) for p in photos])
    expected = expit(np.mean([logit(m.probabilities(pixels)) for m in members], axis=0))
    assert np.abs(both.probabilities(pixels) - expected).max() < 1e-5
    assert np.abs(members[0].probabilities(pixels) - members[1].probabilities(pixels)).max() > 1e-3  # two models
    # one forward pass gives everything a member gives: every member's pooled features side by side,
    # and class maps that are the mean of the members' maps (the ensemble's head is their stacked heads)
    embedding = both.embeddings(pixels[:1])[0]
    assert embedding.shape == (2 * members[0].embeddings(pixels[:1]).shape[1],)
    assert np.allclose(embedding, np.concatenate([m.embeddings(pixels[:1])[0] for m in members]), atol=1e-4)
    analysis = both.analyse(photos[0])
    assert set(analysis.cams) == set(both.labels) and all(0 <= c.min() and c.max() <= 1 for c in analysis.cams.values())


@pytest.mark.slow  # the session's tiny model trains
def test_the_ensemble_directory_records_its_members_and_validation_thresholds(joined, tiny_model, second_member):
    info = json.loads((joined / "metrics.json").read_text())
    members = [m["from"] for m in info["training"]["members"]]
    assert members == [tiny_model.name, second_member.name] and info["training"]["architecture"].endswith("(ensemble)")
    # tuned when it was joined: from the ensemble itself, not the temporary folder the joined network was staged in
    assert info["retuned"] == {"from": "ens-ab", "tta": "none", "criterion": "mcc"}
    assert not list(joined.parent.glob("ens-ab.*"))  # the staging folder is gone
    thresholds = json.loads((joined / "thresholds.json").read_text())
    assert thresholds["tta"] == "none" and thresholds["chosen_on"].startswith("validation split")
    assert (
        info["validation"]["n_images"] == json.loads((tiny_model / "metrics.json").read_text())["split"]["validation"]
    )
    assert (
        info["test"]["hamming_loss"] >= 0
        and (joined / "model.keras").stat().st_size > (tiny_model / "model.keras").stat().st_size
    )


@pytest.mark.slow  # the session's tiny model trains
def test_members_that_disagree_on_the_input_size_are_refused_in_one_line(tiny_model, tiny_dataset, tmp_path):
    import shutil

    from model.modeldir import ModelCard

    other = tmp_path / "smaller"  # the members are checked on their cards: a copy whose card says 64 pixels
    shutil.copytree(tiny_model, other)
    card = ModelCard.read(other)
    card.training.input_size = 64
    card.write(other)
    r = run(
        "model.ensemble",
        "--members",
        str(tiny_model),
        str(other),
        "--data",
        str(tiny_dataset),
        "--tta",
        "none",
        "--out",
        str(tmp_path / "joined"),
    )
    assert r.returncode != 0 and r.stderr == f"error: {other}: not the same input size as {tiny_model}\n"
    assert not (tmp_path / "joined").exists()
