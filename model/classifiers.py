"""Classifier networks q(y|x) of the semi-supervised M2 model: the encoders' trunks with a
softmax head (the layer returns logits)."""

from __future__ import annotations

import keras
from keras import layers

from model.config import ModelConfig
from model.layers import PACKAGE
from model.networks import ConvTrunk, Network, apply_layers


@keras.saving.register_keras_serializable(package=PACKAGE)
class MLPClassifier(Network):
    """q(y|x) logits: flatten, dense hidden layers, then one logit per class.

    Args:
        num_classes: K.
        hidden_units: widths of the hidden layers.
        activation: hidden activation.

    Example:
        >>> logits = MLPClassifier(10, (64,))(images)  # (B, 10)
    """

    def __init__(self, num_classes: int, hidden_units=(512, 256), activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        # === Layers ===
        self.flatten = layers.Flatten()
        self.hidden = [layers.Dense(u, activation=activation) for u in self.hidden_units]
        self.logits = layers.Dense(self.num_classes, name="logits")

    def call(self, images, condition=None):
        h = apply_layers(self.flatten(images), self.hidden)  # (B, units)
        return self.logits(h)  # (B, K)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    # === Config ===
    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvClassifier(ConvTrunk):
    """q(y|x) logits: stride-2 convolutions, an optional dense layer, one logit per class.

    Args:
        num_classes: K.
        conv_filters: filters per stride-2 convolution.
        hidden_units: the first entry, if any, is the width of a dense layer after the
            convolutions.
        kernel_size: convolution kernel size.
        activation: hidden activation.

    Example:
        >>> logits = ConvClassifier(10, (16, 32))(images)  # (B, 10)
    """

    def __init__(self, num_classes: int, conv_filters=(32, 64), hidden_units=(), kernel_size=3,
                 activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.make_trunk(conv_filters, hidden_units, kernel_size, activation)
        # === Layers ===
        self.logits = layers.Dense(self.num_classes, name="logits")

    def call(self, images, condition=None):
        return self.logits(self.trunk(images))  # (B, K)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    # === Config ===
    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            **self.trunk_config(),
        }


def build_classifier(config: ModelConfig):
    """The q(y|x) network of `config.classifier_architecture`, over `config.image_shape`."""
    if config.classifier_architecture == "mlp":
        return MLPClassifier(config.num_classes, config.hidden_units, config.activation,
                             name="classifier")
    return ConvClassifier(config.num_classes, config.conv_filters, config.hidden_units,
                          config.kernel_size, config.activation, name="classifier")


def build_shift(config: ModelConfig, seed: int | None = None):
    """The training-time shift of the classifier's images (`config.m2.classifier_shift`
    pixels at most, each way), or None when it is 0. The layer moves images only when
    called with `training=True`."""
    if not config.m2.classifier_shift:
        return None
    height, width = config.image_shape[:2]
    return layers.RandomTranslation(config.m2.classifier_shift / height, config.m2.classifier_shift / width,
                                    fill_mode="constant", interpolation="nearest", fill_value=0.0,
                                    seed=seed, name="classifier_shift")
