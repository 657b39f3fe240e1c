"""Small pure functions for the VAE objective. Every function returns per-example values.

Shapes: B = batch, D = latent dimensions; images are (B, H, W, C).
"""

from __future__ import annotations

import math

from keras import ops

LOG_2PI = math.log(2.0 * math.pi)


def _sum_over_examples(values):
    """Sums every axis but the first: (B, ...) -> (B,)."""
    return ops.sum(ops.reshape(values, (ops.shape(values)[0], -1)), axis=-1)


def kl_divergence(z_mean, z_log_var):
    """KL(N(mu, diag(sigma^2)) || N(0, I)) in closed form, summed over D: (B, D) -> (B,)."""
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)


def kl_per_unit(z_mean, z_log_var):
    """The closed-form KL of each latent unit: (B, D) -> (B, D)."""
    return -0.5 * (1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))


def bernoulli_nll(x, logits):
    """-log Bernoulli(x | sigmoid(logits)), summed over pixels: (B, H, W, C) -> (B,).

    Computed from logits as softplus(l) - l * x (softplus(l) = log(1 + exp(l)), which
    TensorFlow evaluates stably in one kernel), finite and exact for any logit; x may be
    binary or a probability in [0, 1].
    """
    x = ops.cast(x, logits.dtype)
    per_pixel = ops.softplus(logits) - logits * x
    return _sum_over_examples(per_pixel)


def gaussian_nll(x, mean, log_scale):
    """-log N(x | mean, exp(log_scale)^2) with its constant, summed over pixels: -> (B,)."""
    x = ops.cast(x, mean.dtype)
    per_pixel = 0.5 * ops.square((x - mean) * ops.exp(-log_scale)) + log_scale + 0.5 * LOG_2PI
    return _sum_over_examples(per_pixel)


def log_standard_normal(z):
    """log N(z | 0, I), summed over the last axis: (..., D) -> (...)."""
    return -0.5 * ops.sum(ops.square(z) + LOG_2PI, axis=-1)


def log_diag_normal(z, mean, log_var):
    """log N(z | mean, diag(exp(log_var))), summed over the last axis: (..., D) -> (...)."""
    return -0.5 * ops.sum(
        ops.square(z - mean) * ops.exp(-log_var) + log_var + LOG_2PI, axis=-1
    )


def kl_weight(step, beta: float, warmup_steps: int):
    """The KL weight after `step` optimizer steps: ramps linearly from 0 to `beta`."""
    if warmup_steps <= 0:
        return ops.convert_to_tensor(beta, "float32")
    progress = ops.cast(step, "float32") / float(warmup_steps)
    return beta * ops.minimum(1.0, progress)
