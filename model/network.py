"""The networks: EfficientNet-Lite with a multi-label head, and the original project's small CNN.

Both take 0..255 RGB at their input size and end in one sigmoid per label; the
normalisation is a layer inside the model, so callers never preprocess pixels.
"""

import keras
from keras import layers

from model.backbones.efficientnet_lite import VARIANTS, build_backbone, load_imagenet_weights

ARCHITECTURES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "seed-cnn"]
SEED_CNN_SIZE = 100
GRADCAM_LAYER = {"efficientnet": "top_activation", "seed": "seed_conv4"}
EMBEDDING_LAYER = {"efficientnet": "pool", "seed": "seed_dense"}  # what "similar photos" compares


def build_efficientnet(label_names, variant="lite0", size=None, dropout=0.3, pretrained=True):
    size = size or VARIANTS[variant]["size"]
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name="normalize")(inputs)  # TF-Lite's (x - 127) / 128
    x = layers.GlobalAveragePooling2D(name="pool")(build_backbone(x, variant))
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(len(label_names), activation="sigmoid", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"efficientnet_{variant}")
    if pretrained:
        load_imagenet_weights(model, variant)
    return model


def build_seed_cnn(label_names):
    """The original project's network: conv 32-32-64-64, dense 512, at 100x100."""
    inputs = keras.Input((SEED_CNN_SIZE, SEED_CNN_SIZE, 3), name="image")
    x = layers.Rescaling(1 / 255, name="normalize")(inputs)
    for i, filters in enumerate((32, 32, 64, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same" if i % 2 else "valid", activation="relu", name=f"seed_conv{i}")(x)
        if i % 2 == 0:
            x = layers.MaxPooling2D(name=f"seed_pool{i // 2}")(x)
            x = layers.Dropout(0.25, name=f"seed_dropout{i // 2}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", name="seed_dense")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    outputs = layers.Dense(len(label_names), activation="sigmoid", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def build_model(arch, label_names, pretrained=True, size=None):
    """`size`: input size for EfficientNet (default: the variant's native size); the seed CNN is always 100."""
    if arch == "seed-cnn":
        return build_seed_cnn(label_names)
    if arch.startswith("efficientnet-") and arch.split("-", 1)[1] in VARIANTS:
        return build_efficientnet(label_names, arch.split("-", 1)[1], size=size, pretrained=pretrained)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def gradcam_layer(model):
    """Name of the last convolutional feature map, where Grad-CAM looks."""
    return GRADCAM_LAYER["seed" if model.name == "seed_cnn" else "efficientnet"]


def embedding_layer(model):
    """Name of the layer whose output is the photo's embedding (the pooled features)."""
    return EMBEDDING_LAYER["seed" if model.name == "seed_cnn" else "efficientnet"]


def has_cam_head(model):
    """True for global average pooling -> dropout -> dense: there Grad-CAM is the class activation map."""
    return model.name != "seed_cnn"


def flip_tta(model, spatial=()):
    """`model` run on the photo and its mirror image, each output the mean of the two; outputs whose index is
    in `spatial` are feature maps, flipped back before the mean so they stay where the photo has them."""
    image = keras.Input(model.input_shape[1:], name="image")
    plain, mirrored = model(image), model(keras.ops.flip(image, axis=2))
    if not isinstance(plain, (list, tuple)):
        return keras.Model(image, (plain + mirrored) / 2, name=f"{model.name}_flip_tta")
    return keras.Model(
        image,
        [(p + (keras.ops.flip(m, axis=2) if i in spatial else m)) / 2 for i, (p, m) in enumerate(zip(plain, mirrored))],
        name=f"{model.name}_flip_tta",
    )
