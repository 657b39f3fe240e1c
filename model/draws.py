"""Random draws shared by the models and their evaluation: stateless seeds, the
reparameterised draw z = mu + sigma * eps, and the batch tiled once per draw.

Stateless draws give the same numbers in eager code, in a `tf.function` and inside an
exported SavedModel. Shapes: B = batch, D = latent units, n = draws per example.
"""

from __future__ import annotations

import tensorflow as tf
from keras import ops


def as_seed(seed) -> tf.Tensor:
    """An int, a pair or an int64[2] tensor -> the int64[2] seed of stateless ops."""
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int64)
    return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def fold(seed, salt: int) -> tf.Tensor:
    """A seed derived from `seed` (as `as_seed` takes it) and an int: -> int64[2]."""
    return tf.random.experimental.stateless_fold_in(as_seed(seed), salt)


def reparameterise(mean, log_var, eps):
    """The reparameterisation trick: z = mean + exp(log_var / 2) * eps, eps ~ N(0, I) (any
    shapes that broadcast), so a draw is differentiable in mean and log_var."""
    return mean + ops.exp(0.5 * log_var) * eps


def posterior_draws(z_mean, z_log_var, num, seed):
    """num reparameterised draws z = mean + exp(log_var / 2) * eps per row, stateless from
    an int64[2] seed: (B, D) -> (num, B, D)."""
    eps = tf.random.stateless_normal(tf.concat([[num], tf.shape(z_mean)], 0), seed)
    return reparameterise(z_mean[None], z_log_var[None], eps)


def posterior_draw(z_mean, z_log_var, seed):
    """One reparameterised draw per row (`posterior_draws` with num = 1): (B, D) -> (B, D)."""
    return posterior_draws(z_mean, z_log_var, 1, as_seed(seed))[0]


def tile_draws(values, count: int):
    """(B, ...) -> (count * B, ...): the batch repeated once per draw (row i * B + b holds
    example b), matching `tf.reshape` of (count, B, ...) draws."""
    values = tf.convert_to_tensor(values)
    return tf.reshape(tf.broadcast_to(values[None], (count, *tf.unstack(tf.shape(values)))),
                      tf.concat([[-1], tf.shape(values)[1:]], 0))


def seed_or_fresh(seed) -> tf.Tensor:
    """`as_seed(seed)`, or a fresh random int64[2] seed when `seed` is None."""
    if seed is None:
        return tf.random.uniform((2,), maxval=2**31 - 1, dtype=tf.int64)
    return as_seed(seed)
