"""The sampling layer (reparameterisation trick) and the decoder likelihoods."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from model import losses
from model.draws import reparameterise

PACKAGE = "vae"


@keras.saving.register_keras_serializable(package=PACKAGE)
class Sampling(keras.layers.Layer):
    """Draws z = mu + sigma * eps with eps ~ N(0, I): the reparameterisation trick.

    The noise comes from a Keras `SeedGenerator`, so runs are reproducible for a seed
    and the draw stays off the gradient path: gradients reach both `z_mean` and
    `z_log_var`.

    Args:
        seed: integer seed of the noise, or None for a random one.

    Example:
        >>> z = Sampling(seed=1)([ops.zeros((4, 2)), ops.zeros((4, 2))])  # (4, 2)
    """

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, seed=None):
        """inputs: (z_mean, z_log_var), each (B, D); seed: an int64[2] tensor for a
        stateless draw (the same z for the same seed), or None for the seed generator."""
        z_mean, z_log_var = inputs
        if seed is None:
            eps = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator)
        else:
            eps = tf.random.stateless_normal(tf.shape(z_mean), seed, dtype=z_mean.dtype)
        return reparameterise(z_mean, z_log_var, eps)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BernoulliLikelihood(keras.layers.Layer):
    """p(x|z) = Bernoulli(sigmoid(logits)) per pixel; the decoder emits the logits.

    Example:
        >>> BernoulliLikelihood().nll(x, logits)  # (B,) nats
    """

    def nll(self, x, params):
        """-log p(x|z) summed over pixels, per example: (B, H, W, C) -> (B,)."""
        return losses.bernoulli_nll(x, params)

    def mean(self, params):
        """The pixel probabilities."""
        return ops.sigmoid(params)

    def call(self, params):
        return self.mean(params)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GaussianLikelihood(keras.layers.Layer):
    """p(x|z) = N(mean, sigma^2) per pixel; the decoder emits the mean.

    sigma is one scalar, `exp(log_scale)`, learned by SGD or fixed. The negative
    log-likelihood keeps its normalising constant so that nats compare across models.
    The learned log-scale is floored at `MIN_LOG_SCALE` so that the density on
    discretised pixels cannot diverge.

    Args:
        log_scale: initial (or fixed) log standard deviation.
        learn_scale: whether the log-scale is trainable.
    """

    MIN_LOG_SCALE = -6.0

    def __init__(self, log_scale: float = 0.0, learn_scale: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.log_scale_init = float(log_scale)
        self.learn_scale = bool(learn_scale)
        self.log_scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.log_scale_init),
            trainable=self.learn_scale,
            name="log_scale",
        )

    def _log_scale(self, dtype):
        return ops.maximum(ops.cast(self.log_scale, dtype), self.MIN_LOG_SCALE)

    def nll(self, x, params):
        """-log p(x|z) summed over pixels, per example: (B, H, W, C) -> (B,)."""
        return losses.gaussian_nll(x, params, self._log_scale(params.dtype))

    def mean(self, params):
        """The Gaussian means."""
        return params

    def call(self, params):
        return self.mean(params)

    def get_config(self):
        return {
            **super().get_config(),
            "log_scale": self.log_scale_init,
            "learn_scale": self.learn_scale,
        }
