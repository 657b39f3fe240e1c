"""The conditional VAE: q(z|x, y) and p(x|z, y), y a class label or an observed half."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from model.conditions import make_condition
from model.draws import seed_or_fresh
from model.layers import PACKAGE
from model.vae import VAE


@keras.saving.register_keras_serializable(package=PACKAGE)
class CVAE(VAE):
    """A conditional VAE trained on the negative conditional ELBO of -log p(x|y).

    Both networks receive the condition vector c: the one-hot label
    (`model_config.condition == "label"`), or the observed half of the image flattened
    (`"left_half"`, `"right_half"`, `"top_half"`, `"bottom_half"`), in which case the
    model's x is the other half. The objective is the VAE's with c fed in: per example
    -log p(x|z, y) in `loss_terms`, the KL of q(z|x, y) to N(0, I) with `add_loss`.
    Batches are `(images, labels)`; a half model ignores the labels.

    Args:
        model_config: a `ModelConfig` (or its dict) with `kind="cvae"`.
        seed: seed of the sampling noise.

    Example:
        >>> cvae = CVAE(ModelConfig(kind="cvae", latent_dim=8))
        >>> cvae.compile(optimizer="adam")
        >>> images = cvae.generate([0, 1, 2], seed=0)  # (3, 28, 28, 1): a T-shirt, trousers...
        >>> half = CVAE(ModelConfig(kind="cvae", condition="left_half"))
        >>> whole = half.complete(images, seed=0)  # left halves kept, right halves drawn
    """

    def make_condition(self):
        return make_condition(self.model_config)

    @property
    def num_classes(self) -> int | None:
        return self.condition.num_classes

    # === Generation ===
    def _prior_draws(self, count, seed, temperature):
        """The prior's draws (N(0, temperature^2 I)), stateless for a given seed (a fresh
        one when None): (count, D)."""
        return self.prior_draw(count, seed_or_fresh(seed), temperature)

    def generate(self, labels, seed=None, temperature: float = 1.0):
        """Draws z ~ N(0, T^2 I) and decodes it with each class label: (B,) -> (B, H, W, C).

        Raises:
            ValueError: the model is conditioned on a half, not a label.
        """
        if not self.takes_labels:
            raise ValueError(f"generate(labels) needs a label-conditioned model; this one "
                             f"observes the {self.condition.name} (use complete(images))")
        labels = ops.convert_to_tensor(labels, "int64")
        z = self._prior_draws(tf.shape(labels)[0], seed, temperature)
        return self.decode(z, self.condition.one_hot(labels))

    def complete(self, images, seed=None, temperature: float = 1.0):
        """Keeps the observed half of each image and draws the other one from p(x|z, y),
        z ~ N(0, T^2 I) (T = 0: the decoder's mean at the prior's mode): -> (B, H, W, C).

        Raises:
            ValueError: the model is conditioned on labels, not a half.
        """
        if not self.completes:
            raise ValueError("complete(images) needs a half-conditioned model; this one is "
                             "conditioned on labels (use generate(labels))")
        images = ops.convert_to_tensor(images, "float32")
        z = self._prior_draws(tf.shape(images)[0], seed, temperature)
        return self.condition.assemble(images, self.decode(z, self.condition.vector(images)))

    def sample(self, num_samples: int, seed=None, temperature: float = 1.0):
        """Samples for a glance (TensorBoard): classes 0, 1, ..., K-1, 0, ... for a label
        model; a half model has no prior over its condition, so it completes an empty
        (all-zero) observed half. -> (num_samples, H, W, C)."""
        if self.takes_labels:
            labels = ops.arange(num_samples) % self.condition.num_classes
            return self.generate(labels, seed, temperature)
        return self.complete(ops.zeros((num_samples, *self.image_shape)), seed, temperature)
