"""What a conditional VAE is conditioned on: the class label, or one observed half of the
image. A condition splits a batch of images (and labels) into the model's `x` and the
condition vector `c` that both networks receive, and puts a generated `x` back into a
whole image. No weights: the networks own those.

Shapes: B = batch, K = classes; images are (B, H, W, C).
"""

from __future__ import annotations

import math

from keras import ops

from model.config import HALF_CONDITIONS, ModelConfig


class LabelCondition:
    """y = the one-hot class label; x = the whole image.

    Args:
        image_shape: (H, W, C) of the images.
        num_classes: K.

    Example:
        >>> x, c = LabelCondition((28, 28, 1), 10).split(images, labels)  # (B,28,28,1), (B,10)
    """

    name = "label"

    def __init__(self, image_shape, num_classes: int):
        self.image_shape = tuple(image_shape)
        self.num_classes = int(num_classes)
        self.x_shape = self.image_shape
        self.dim = self.num_classes

    def one_hot(self, labels):
        """Class labels (B,) -> (B, K) float32. A label outside [0, K) gives a zero row."""
        return ops.one_hot(ops.cast(labels, "int32"), self.num_classes, dtype="float32")

    def split(self, images, labels):
        """(x, c) = (images, one_hot(labels)): (B, H, W, C), (B, K)."""
        if labels is None:
            raise ValueError("a label-conditioned model needs the labels of its images")
        return images, self.one_hot(labels)

    def assemble(self, images, x):
        """The whole image of a generated x: x itself."""
        return x


class HalfCondition:
    """y = one half of the image (observed), x = the other half (modelled).

    The cut is at H // 2 (top/bottom) or W // 2 (left/right): `left_half` observes columns
    [0, W//2) and models [W//2, W); `right_half` observes [W//2, W) and models [0, W//2);
    `top_half` and `bottom_half` likewise for rows.

    Args:
        image_shape: (H, W, C) of the whole images.
        side: one of `HALF_CONDITIONS`, the half that is observed.

    Example:
        >>> half = HalfCondition((28, 28, 1), "left_half")
        >>> x, c = half.split(images, None)  # (B, 28, 14, 1), (B, 28 * 14)
        >>> whole = half.assemble(images, x)  # (B, 28, 28, 1)
    """

    num_classes = None

    def __init__(self, image_shape, side: str):
        if side not in HALF_CONDITIONS:
            raise ValueError(f"side must be one of {HALF_CONDITIONS}, got {side!r}")
        self.name = side
        self.image_shape = tuple(image_shape)
        self.axis = 1 if side in ("top_half", "bottom_half") else 2  # rows or columns of (B, H, W, C)
        self.cut = self.image_shape[self.axis - 1] // 2
        self.observed_first = side in ("left_half", "top_half")
        first, second = list(self.image_shape), list(self.image_shape)
        first[self.axis - 1] = self.cut
        second[self.axis - 1] = self.image_shape[self.axis - 1] - self.cut
        self.observed_shape = tuple(first if self.observed_first else second)
        self.x_shape = tuple(second if self.observed_first else first)
        self.dim = math.prod(self.observed_shape)

    def _parts(self, images):
        size = self.image_shape[self.axis - 1]
        first = images[:, : self.cut] if self.axis == 1 else images[:, :, : self.cut]
        second = images[:, self.cut: size] if self.axis == 1 else images[:, :, self.cut: size]
        return (first, second) if self.observed_first else (second, first)  # (observed, hidden)

    def observed(self, images):
        """The observed half: (B, H, W, C) -> observed_shape."""
        return self._parts(images)[0]

    def hidden(self, images):
        """The modelled half: (B, H, W, C) -> x_shape."""
        return self._parts(images)[1]

    def vector(self, images):
        """The condition vector: the observed half flattened, (B, dim) float32."""
        observed = ops.cast(self.observed(images), "float32")
        return ops.reshape(observed, (ops.shape(observed)[0], self.dim))

    def split(self, images, labels=None):
        """(x, c) = (the modelled half, the observed half flattened); labels are unused."""
        return self.hidden(images), self.vector(images)

    def assemble(self, images, x):
        """The observed half of `images` and a modelled half `x`, as whole images."""
        observed = ops.cast(self.observed(images), x.dtype)
        parts = (observed, x) if self.observed_first else (x, observed)
        return ops.concatenate(parts, axis=self.axis)


def make_condition(config: ModelConfig):
    """The condition of a conditional model's config (`config.condition`)."""
    if config.condition == "label":
        return LabelCondition(config.image_shape, config.num_classes)
    return HalfCondition(config.image_shape, config.condition)
