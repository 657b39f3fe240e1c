"""Priors over the latent code: N(0, I) and the VampPrior (Tomczak and Welling, 2018).

The VampPrior is the mixture of the encoder's own posteriors at K learned pseudo-inputs
u_k, p(z) = (1/K) sum_k q(z|u_k). The pseudo-inputs live in image space: a learned
tensor passed through a hard tanh onto [0, 1], as in the reference implementation.
The model owns the encoder, so the prior layer holds only the pseudo-inputs; the
mixture's components are `model.posterior(pseudo_inputs)`, recomputed at every step.

Shapes: N = any number of codes, K = components, D = latent dimensions.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from model import losses
from model.layers import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class PseudoInputs(keras.layers.Layer):
    """The VampPrior's K learned pseudo-inputs in image space, each pixel in [0, 1].

    The stored weight is unconstrained; `call()` returns it clipped to [0, 1] (a hard
    tanh, whose gradient is 1 inside the interval). Initialised N(0.05, 0.01) per pixel,
    as in the reference code.

    Args:
        count: K, the number of pseudo-inputs.
        image_shape: (H, W, C) of one pseudo-input (the model's x).

    Example:
        >>> u = PseudoInputs(500, (28, 28, 1))()  # (500, 28, 28, 1)
    """

    INIT_MEAN = 0.05
    INIT_STDDEV = 0.01

    def __init__(self, count: int, image_shape, **kwargs):
        super().__init__(**kwargs)
        self.count = int(count)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.values = self.add_weight(
            shape=(self.count, *self.image_shape),
            initializer=keras.initializers.RandomNormal(self.INIT_MEAN, self.INIT_STDDEV),
            name="pseudo_inputs",
        )

    def call(self, indices=None):
        """All K pseudo-inputs (K, H, W, C), or those at `indices` (N,) -> (N, H, W, C)."""
        values = ops.cast(self.values, "float32")
        if indices is not None:
            values = ops.take(values, indices, axis=0)
        return ops.clip(values, 0.0, 1.0)

    def get_config(self):
        return {**super().get_config(), "count": self.count, "image_shape": list(self.image_shape)}


def log_mixture_density(z, means, log_vars):
    """log (1/K) sum_k N(z | means_k, diag(exp(log_vars_k))): (..., D), (K, D) -> (...).

    The quadratic form is expanded into matrix products, so the memory is N x K rather
    than N x K x D (K = 500 components, D = 40 units and thousands of IWAE draws).
    """
    z = tf.convert_to_tensor(z, tf.float32)
    batch_shape = tf.shape(z)[:-1]
    flat = tf.reshape(z, (-1, z.shape[-1]))  # (N, D)
    precision = tf.exp(-log_vars)  # (K, D)
    quadratic = (
        tf.matmul(tf.square(flat), precision, transpose_b=True)  # (N, K)
        - 2.0 * tf.matmul(flat, means * precision, transpose_b=True)
        + tf.reduce_sum(tf.square(means) * precision, axis=-1)[None]
    )
    constant = tf.reduce_sum(log_vars, axis=-1) + z.shape[-1] * losses.LOG_2PI  # (K,)
    log_components = -0.5 * (tf.maximum(quadratic, 0.0) + constant[None])  # (N, K)
    log_p = tf.reduce_logsumexp(log_components, axis=-1) - math.log(means.shape[0])
    return tf.reshape(log_p, batch_shape)


def log_marginal_mixture_density(z, means, log_vars):
    """Each unit's own marginal of the mixture, log (1/K) sum_k N(z_d | mu_kd, var_kd):
    (B, D), (K, D) -> (B, D). (The mixture does not factorise over units; its marginals do
    give each unit's KL for counting active units.)"""
    z = tf.convert_to_tensor(z, tf.float32)
    log_components = -0.5 * (
        tf.square(z[:, None, :] - means[None]) * tf.exp(-log_vars)[None] + log_vars[None] + losses.LOG_2PI
    )  # (B, K, D)
    return tf.reduce_logsumexp(log_components, axis=1) - math.log(means.shape[0])


def draw_components(count, num_components: int, seed):
    """Which pseudo-input each of `count` draws of the mixture uses, uniformly: -> (count,) int32."""
    return tf.random.stateless_uniform(
        tf.reshape(count, (1,)), seed, minval=0, maxval=num_components, dtype=tf.int32
    )
