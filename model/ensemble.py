"""Join trained models into one network whose probabilities are the sigmoid of its members' mean logit.

    python -m model.ensemble --members DIR DIR [...] --data DIR --tta flip|none --out DIR [--force]

The members' last feature maps, side by side, are the ensemble's `top_activation`; global average pooling
and one dense layer follow, as in every member. That layer's kernel stacks the members' kernels, each divided
by the number of members, and its bias is the mean of theirs, so its logits are exactly the mean of the
members' logits, in one forward pass through one model file. Everything that reads a member reads the
ensemble: the class maps are still the class activation map (the mean of the members' maps), the pooled
features (every member's, side by side) are its embedding for similar photos. The members must share labels,
input size and split. Thresholds are then tuned on the shared validation photos under --tta (and the other
mode as "other_tta"), as model.retune tunes them; the test metrics are computed once and only reported.
"""

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np

from model.modeldir import ModelCard, ModelDirError, Training, read_model_dir
from model.retune import add_output_args, retune, summary, write_or_exit


def renamed(prefix):
    """A clone_model clone_function: the same layer under the name prefix + its name."""

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "name": prefix + layer.name})

    return clone


def join(models):
    """One Keras model: the members' feature maps side by side -> pooling -> dropout -> the stacked head."""
    import keras
    from keras import layers

    image = keras.Input(models[0].input_shape[1:], name="image")
    maps, kernels, biases = [], [], []
    for i, member in enumerate(models, start=1):
        # a copy of the member on the shared input, every layer renamed: one flat graph, no name twice
        copy = keras.models.clone_model(member, input_tensors=image, clone_function=renamed(f"m{i}_"))
        copy.set_weights(member.get_weights())
        maps.append(copy.get_layer(f"m{i}_top_activation").output)
        kernel, bias = member.get_layer("probabilities").get_weights()
        kernels.append(kernel / len(models))
        biases.append(bias)
    x = layers.Concatenate(name="top_activation")(maps)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(kernels[0].shape[1], activation="sigmoid", name="probabilities")(x)
    model = keras.Model(image, outputs, name="efficientnet_ensemble")
    model.get_layer("probabilities").set_weights([np.concatenate(kernels), np.mean(biases, axis=0)])
    return model


def check_members(infos):
    """The members must agree on what the ensemble is: labels, input size, split."""
    first = infos[0]
    for info in infos:
        if not (info.card.training.architecture or "").startswith("efficientnet-"):
            raise ModelDirError(f"{info.path}: only EfficientNet-Lite members can be joined (a pooled head)")
        for what, get in (
            ("labels", lambda i: i.labels),
            ("input size", lambda i: i.card.training.input_size),
            ("split", lambda i: i.card.split.seed),
        ):
            if get(info) != get(first):
                raise ModelDirError(f"{info.path}: not the same {what} as {first.path}")


def ensemble(members, data_dir, tta, out):
    """Write the joined model directory `out`; returns its card."""
    import keras

    infos = [read_model_dir(m) for m in members]
    check_members(infos)
    model = join([keras.models.load_model(info.path / "model.keras", compile=False) for info in infos])
    first = infos[0]
    training = Training(
        architecture=" + ".join(i.card.training.architecture for i in infos) + " (ensemble)",
        input_size=first.card.training.input_size,
        parameters=int(model.count_params()),
        members=[dataclasses.replace(i.card.training, from_model=i.path.name) for i in infos],
        minutes=round(sum(i.card.training.minutes or 0 for i in infos), 1),
        checkpoint="each member's own",
    )
    card = ModelCard(first.card.tuning, training, first.card.split)  # validation and test: tuned below
    staging = Path(out).with_name(Path(out).name + ".joined")
    from model.modeldir import write_model_dir
    from model.train import draw_curve

    curves = {f"member {k} ({m.architecture})": m.history or [] for k, m in enumerate(training.members, 1)}
    write_model_dir(staging, model, card, [], [], [], lambda path: draw_curve(curves, path))
    try:
        # thresholds (and metrics) on validation, under --tta; tuned from the ensemble itself, not its staging folder
        return retune(staging, data_dir, tta, out, source=Path(out).name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.ensemble", description=__doc__.split("\n\n")[0])
    p.add_argument("--members", nargs="+", required=True, help="model directories to join (at least 2)")
    add_output_args(p)
    args = p.parse_args(argv)
    if len(args.members) < 2:
        sys.exit("error: --members needs at least two model directories")
    card = write_or_exit(
        args,
        lambda: check_members([read_model_dir(m) for m in args.members]),
        lambda: ensemble(args.members, args.data, args.tta, args.out),
    )
    print(summary(card, args.out))


if __name__ == "__main__":
    main()
