"""Encoder and decoder networks: an MLP pair and a convolutional pair, for any H x W x C.

The MLP's hidden layers are blocks of one kind (`BLOCKS`): plain dense layers, gated
dense layers (h = act(W x + b) * sigmoid(V x + c), as in the VampPrior paper's
GatedDense) or residual dense blocks (a dense layer, then h + act(W2 h + b2)).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from model.layers import PACKAGE

# Kinds of hidden block of the MLP networks (`ModelConfig.block`).
BLOCKS = ("dense", "gated", "residual")


def apply_layers(x, stack):
    """Applies a list of layers in order."""
    for layer in stack:
        x = layer(x)
    return x


@keras.saving.register_keras_serializable(package=PACKAGE)
class GatedDense(keras.layers.Layer):
    """A gated dense layer: act(W x + b) * sigmoid(V x + c), (B, F) -> (B, units).

    The gate learns per unit how much of the feature passes, as in the VampPrior
    paper's `GatedDense` (there with no activation on the feature: `activation=None`).

    Args:
        units: output width.
        activation: activation of the feature path (None: linear).

    Example:
        >>> h = GatedDense(300)(x)  # (B, F) -> (B, 300)
    """

    def __init__(self, units: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = activation
        # === Layers ===
        self.feature = layers.Dense(self.units, activation=activation, name="feature")
        self.gate = layers.Dense(self.units, activation="sigmoid", name="gate")

    def build(self, input_shape):
        self.feature.build(input_shape)
        self.gate.build(input_shape)
        self.built = True

    def call(self, x):
        return self.feature(x) * self.gate(x)  # (B, units)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    # === Config ===
    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualDense(keras.layers.Layer):
    """A residual dense block: h = act(W1 x + b1), then h + act(W2 h + b2), (B, F) -> (B, units).

    The first layer changes the width, so blocks of any widths chain; the second adds a
    correction to it through an identity path.

    Args:
        units: output width.
        activation: hidden activation.

    Example:
        >>> h = ResidualDense(256)(x)  # (B, F) -> (B, 256)
    """

    def __init__(self, units: int, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = activation
        # === Layers ===
        self.project = layers.Dense(self.units, activation=activation, name="project")
        self.residual = layers.Dense(self.units, activation=activation, name="residual")

    def build(self, input_shape):
        self.project.build(input_shape)
        self.residual.build((*input_shape[:-1], self.units))
        self.built = True

    def call(self, x):
        h = self.project(x)  # (B, units)
        return h + self.residual(h)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    # === Config ===
    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation}


def hidden_blocks(hidden_units, activation, block: str = "dense") -> list:
    """One hidden layer of kind `block` (`BLOCKS`) per width, in the given order."""
    if block == "dense":
        return [layers.Dense(u, activation=activation) for u in hidden_units]
    if block == "gated":
        return [GatedDense(u, activation=activation) for u in hidden_units]
    if block == "residual":
        return [ResidualDense(u, activation=activation) for u in hidden_units]
    raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")


def set_output_bias(layer, value) -> None:
    """Sets the bias of a network's output layer to `value` (a scalar, or one value per
    output unit, e.g. the logit of the mean training image per pixel)."""
    bias = layer.bias
    value = np.asarray(value, "float32")
    if value.size > 1:
        value = value.reshape(-1)  # (H, W, C) -> (H*W*C,), the order of the output units
    bias.assign(np.broadcast_to(value, tuple(bias.shape)).astype(bias.dtype))


def strided_convs(filters, kernel_size: int, activation) -> list:
    """One stride-2 "same" convolution per filter count: each halves H and W (encoder order)."""
    return [layers.Conv2D(f, kernel_size, strides=2, padding="same", activation=activation) for f in filters]


def _with_condition(h, condition):
    """Appends the condition vector to the features: (B, F), (B, C) -> (B, F + C)."""
    if condition is None:
        return h
    return ops.concatenate([h, ops.cast(condition, h.dtype)], axis=-1)


class Network(keras.layers.Layer):
    """A layer made of sublayers: `build` runs `call` once on a symbolic input, so that
    every sublayer is built with its real input shape (needed to reload saved weights).

    A network with `condition_dim > 0` also takes a condition vector (B, condition_dim)
    as its second argument (a conditional VAE's y); the encoders append it to the
    features before the dense layers, the decoders to z.
    """

    condition_dim = 0

    def build(self, input_shape):
        condition = None
        if self.condition_dim:
            condition = keras.KerasTensor((input_shape[0], self.condition_dim))
        self.call(keras.KerasTensor(input_shape), condition)
        self.built = True

    def build_from_config(self, config):
        # Called with both inputs, Keras records a shape per input; the first is enough.
        if config and "shapes_dict" in config:
            config = {"input_shape": next(iter(config["shapes_dict"].values()))}
        super().build_from_config(config)


class ConvTrunk(Network):
    """A network that opens with the convolutional trunk: stride-2 convolutions, flatten,
    the condition vector appended (if any), then an optional dense layer. The encoder
    (`ConvEncoder`) and M2's classifier (`model.classifiers.ConvClassifier`) put their
    heads on it. Its layers are the attributes `convs`, `flatten` and `hidden`.
    """

    def make_trunk(self, conv_filters, hidden_units, kernel_size, activation) -> None:
        """Stores the trunk's arguments (see `ConvEncoder`) and creates its layers."""
        self.conv_filters = tuple(int(f) for f in conv_filters)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.kernel_size = int(kernel_size)
        self.activation = activation
        # === Layers ===
        self.convs = strided_convs(self.conv_filters, self.kernel_size, activation)
        self.flatten = layers.Flatten()
        self.hidden = [layers.Dense(u, activation=activation) for u in self.hidden_units[:1]]

    def trunk(self, images, condition=None):
        """(B, H, W, C) images (and (B, condition_dim) conditions) -> (B, features)."""
        h = apply_layers(images, self.convs)  # (B, H/2^n, W/2^n, F)
        h = _with_condition(self.flatten(h), condition)  # (B, features [+ condition_dim])
        return apply_layers(h, self.hidden)  # (B, units)

    def trunk_config(self) -> dict:
        """The trunk's arguments, for `get_config`."""
        return {
            "conv_filters": list(self.conv_filters),
            "hidden_units": list(self.hidden_units),
            "kernel_size": self.kernel_size,
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class MLPEncoder(Network):
    """q(z|x): flatten, dense hidden layers, then the two heads `z_mean` and `z_log_var`.

    Args:
        latent_dim: size of z.
        hidden_units: widths of the hidden layers.
        activation: hidden activation.
        condition_dim: size of the condition vector y of q(z|x, y) (0: unconditional).
        block: kind of hidden layer, one of `BLOCKS` ("dense", "gated", "residual").

    Example:
        >>> z_mean, z_log_var = MLPEncoder(2, (64,))(images)  # (B, 2), (B, 2)
        >>> z_mean, z_log_var = MLPEncoder(2, (64,), condition_dim=10)(images, one_hot)
    """

    def __init__(self, latent_dim: int, hidden_units=(512, 256), activation="relu",
                 condition_dim: int = 0, block: str = "dense", **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.condition_dim = int(condition_dim)
        self.block = block
        # === Layers ===
        self.flatten = layers.Flatten()
        self.hidden = hidden_blocks(self.hidden_units, activation, block)
        self.mean_head = layers.Dense(self.latent_dim, name="z_mean")
        self.log_var_head = layers.Dense(self.latent_dim, name="z_log_var")

    def call(self, images, condition=None):
        h = _with_condition(self.flatten(images), condition)  # (B, H*W*C [+ condition_dim])
        h = apply_layers(h, self.hidden)  # (B, units)
        return self.mean_head(h), self.log_var_head(h)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.latent_dim), (input_shape[0], self.latent_dim)

    # === Config ===
    def get_config(self):
        return {
            **super().get_config(),
            "latent_dim": self.latent_dim,
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "condition_dim": self.condition_dim,
            "block": self.block,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class MLPDecoder(Network):
    """p(x|z) parameters: dense hidden layers (mirrored), then one value per pixel.

    Args:
        image_shape: (H, W, C) of the output.
        hidden_units: widths of the hidden layers, in encoder order (used reversed).
        activation: hidden activation.
        condition_dim: size of the condition vector y of p(x|z, y) (0: unconditional).
        block: kind of hidden layer, one of `BLOCKS` ("dense", "gated", "residual").
    """

    def __init__(self, image_shape, hidden_units=(512, 256), activation="relu",
                 condition_dim: int = 0, block: str = "dense", **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.condition_dim = int(condition_dim)
        self.block = block
        # === Layers ===
        self.hidden = hidden_blocks(tuple(reversed(self.hidden_units)), activation, block)
        self.out = layers.Dense(math.prod(self.image_shape), name="pixels")
        self.reshape = layers.Reshape(self.image_shape)

    def call(self, z, condition=None):
        h = apply_layers(_with_condition(z, condition), self.hidden)  # (B, units)
        return self.reshape(self.out(h))  # (B, H, W, C)

    def set_output_bias(self, value) -> None:
        """Sets the per-pixel output bias: a scalar or an (H, W, C) array of logits (or means)."""
        set_output_bias(self.out, value)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.image_shape)

    # === Config ===
    def get_config(self):
        return {
            **super().get_config(),
            "image_shape": list(self.image_shape),
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "condition_dim": self.condition_dim,
            "block": self.block,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvEncoder(ConvTrunk):
    """q(z|x): stride-2 convolutions, an optional dense layer, then the two heads.

    Args:
        latent_dim: size of z.
        conv_filters: filters per stride-2 convolution.
        hidden_units: the first entry, if any, is the width of a dense layer after the
            convolutions.
        kernel_size: convolution kernel size.
        activation: hidden activation.
        condition_dim: size of the condition vector y of q(z|x, y), appended to the
            flattened convolution features (0: unconditional).
    """

    def __init__(
        self,
        latent_dim: int,
        conv_filters=(32, 64),
        hidden_units=(),
        kernel_size=3,
        activation="relu",
        condition_dim: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.condition_dim = int(condition_dim)
        self.latent_dim = int(latent_dim)
        self.make_trunk(conv_filters, hidden_units, kernel_size, activation)
        # === Layers ===
        self.mean_head = layers.Dense(self.latent_dim, name="z_mean")
        self.log_var_head = layers.Dense(self.latent_dim, name="z_log_var")

    def call(self, images, condition=None):
        h = self.trunk(images, condition)  # (B, units)
        return self.mean_head(h), self.log_var_head(h)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.latent_dim), (input_shape[0], self.latent_dim)

    # === Config ===
    def get_config(self):
        return {
            **super().get_config(),
            "latent_dim": self.latent_dim,
            **self.trunk_config(),
            "condition_dim": self.condition_dim,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvDecoder(Network):
    """p(x|z) parameters: dense to a small feature map, stride-2 transposed convolutions
    (mirrored filters), a crop to H x W, then a convolution to C channels.

    Args:
        image_shape: (H, W, C) of the output.
        conv_filters: filters in encoder order (used reversed).
        hidden_units: the first entry, if any, is the width of a dense layer after z.
        kernel_size: convolution kernel size.
        activation: hidden activation.
        condition_dim: size of the condition vector y of p(x|z, y), appended to z
            (0: unconditional).
    """

    def __init__(
        self,
        image_shape,
        conv_filters=(32, 64),
        hidden_units=(),
        kernel_size=3,
        activation="relu",
        condition_dim: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.condition_dim = int(condition_dim)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.conv_filters = tuple(int(f) for f in conv_filters)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.kernel_size = int(kernel_size)
        self.activation = activation
        height, width, channels = self.image_shape
        n = len(self.conv_filters)
        self.base = (math.ceil(height / 2**n), math.ceil(width / 2**n), self.conv_filters[-1])
        # === Layers ===
        self.hidden = [layers.Dense(u, activation=activation) for u in self.hidden_units[:1]]
        self.project = layers.Dense(math.prod(self.base), activation=activation)
        self.reshape = layers.Reshape(self.base)
        self.deconvs = [
            layers.Conv2DTranspose(
                f, self.kernel_size, strides=2, padding="same", activation=activation
            )
            for f in reversed(self.conv_filters)
        ]
        extra_h, extra_w = self.base[0] * 2**n - height, self.base[1] * 2**n - width
        self.crop = layers.Cropping2D(
            ((extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2))
        )
        self.out = layers.Conv2D(channels, self.kernel_size, padding="same", name="pixels")

    def call(self, z, condition=None):
        h = apply_layers(_with_condition(z, condition), self.hidden)  # (B, units or D [+ condition_dim])
        h = self.reshape(self.project(h))  # (B, H/2^n, W/2^n, F)
        h = apply_layers(h, self.deconvs)  # (B, >=H, >=W, F0)
        return self.out(self.crop(h))  # (B, H, W, C)

    def set_output_bias(self, value) -> None:
        """Sets the per-channel output bias from a scalar or an (H, W, C) array (its
        mean over pixels, one value per channel: a convolution's bias is per channel)."""
        value = np.asarray(value, "float32")
        if value.ndim == 3:
            value = value.mean(axis=(0, 1))  # (C,)
        set_output_bias(self.out, value)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.image_shape)

    # === Config ===
    def get_config(self):
        return {
            **super().get_config(),
            "image_shape": list(self.image_shape),
            "conv_filters": list(self.conv_filters),
            "hidden_units": list(self.hidden_units),
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "condition_dim": self.condition_dim,
        }
