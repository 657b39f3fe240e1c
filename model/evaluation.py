"""Per-example evaluation of a trained VAE: the ELBO and the IWAE estimate of log p(x).

Both use stateless random draws, so a seed gives the same numbers in eager code, in a
`tf.function` and inside an exported SavedModel. They work on the model's `x` and an
optional condition vector `c` (a conditional VAE's y): `model.posterior(x, c)` is
q(z|x, y) and `model.decode_params(z, c)` the parameters of p(x|z, y); with `c = None`
they are q(z|x) and p(x|z), and the IWAE estimates log p(x) (log p(x|y) otherwise).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import tensorflow as tf

from model import losses
from model.draws import as_seed, posterior_draw, posterior_draws, tile_draws
from model.priors import Prior

__all__ = ["Evaluated", "as_seed", "chunk_size_for", "elbo_kl", "importance_log_mean_exp", "iwae_chunk_size",
           "iwae_log_likelihood", "kl_per_unit", "negative_elbo", "posterior_draws", "tile_draws"]

# Decoder outputs held in memory at once by the IWAE loop (float32 values): 2^25 = 128 MiB.
IWAE_MEMORY_BUDGET = 2**25


class Evaluated(Protocol):
    """What the evaluation calls on a model (`model.vae.VAE` and its subclasses)."""

    likelihood: Any  # `nll(x, params)` -> (B,) and `mean(params)`
    prior: Prior

    def posterior(self, x, condition=None):
        """q(z|x[, c]): (z_mean, z_log_var), (B, D) float32 each."""

    def decode_params(self, z, condition=None):
        """The likelihood's parameters of x for each z (and condition vector)."""


def negative_elbo(model: Evaluated, images, seed=0, condition=None):
    """The single-sample negative ELBO of each x (given c), with beta = 1: -> (B,).

    Args:
        model: an `Evaluated` model.
        images: the model's x, (B, H, W, C).
        seed: an int or an int64[2] tensor.
        condition: the condition vectors (B, C), or None.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    z_mean, z_log_var = model.posterior(images, condition)
    z = posterior_draw(z_mean, z_log_var, seed)
    reconstruction = model.likelihood.nll(images, model.decode_params(z, condition))
    return reconstruction + model.prior.kl(z, z_mean, z_log_var)


def elbo_kl(model: Evaluated, images, seed=0, condition=None):
    """The KL part of `negative_elbo` for the same seed (the same draw z): -> (B,)."""
    z_mean, z_log_var = model.posterior(tf.convert_to_tensor(images, tf.float32), condition)
    return model.prior.kl(posterior_draw(z_mean, z_log_var, seed), z_mean, z_log_var)


def iwae_chunk_size(batch: int, image_shape, num_samples: int) -> int:
    """How many importance samples per image fit `IWAE_MEMORY_BUDGET` decoder outputs at
    once (the default when the caller does not size chunks by the whole graph, as
    `pipelines.evaluate` does)."""
    per_sample = max(1, batch * math.prod(image_shape))
    return max(1, min(num_samples, IWAE_MEMORY_BUDGET // per_sample))


def chunk_size_for(images, num_samples: int, chunk_size: int | None = None) -> int:
    """`chunk_size` when given, else `iwae_chunk_size` for `images` (B, H, W, C) (a batch of
    unknown size counts as 256): the default of every model's IWAE estimate."""
    if chunk_size is not None:
        return chunk_size
    return iwae_chunk_size(images.shape[0] or 256, images.shape[1:], num_samples)


def importance_log_mean_exp(log_weights, num_samples: int, seed, chunk_size: int):
    """log (1/k) sum_i exp(w_i) over k importance log-weights drawn chunk after chunk.

    The chunks run one after another in a `tf.while_loop` (never side by side, in eager
    code, in a `tf.function` and in an exported SavedModel alike), so what is held at
    once is one chunk's tensors whatever k is. Chunk j draws with the seed folded with
    its first draw's index; a last, partial chunk draws a whole chunk and masks the rest.

    Args:
        log_weights: (count, seed) -> (count, B) log-weights of `count` fresh draws per
            example, `count` a Python int, `seed` an int64[2] tensor.
        num_samples: k, a Python int.
        seed: an int or an int64[2] tensor.
        chunk_size: draws per chunk (per example).

    Returns:
        (B,) log (1/k) sum_i exp(w_i).
    """
    seed = as_seed(seed)
    chunk = max(1, min(int(chunk_size), num_samples))
    chunks = -(-num_samples // chunk)

    def chunk_total(index):
        start = index * chunk
        weights = log_weights(chunk, tf.random.experimental.stateless_fold_in(seed, start))  # (c, B)
        if chunks * chunk != num_samples:  # the last chunk's extra draws count for nothing
            valid = start + tf.range(chunk) < num_samples  # (c,)
            weights = tf.where(valid[:, None], weights, tf.constant(-math.inf, weights.dtype))
        return tf.reduce_logsumexp(weights, axis=0)  # (B,)

    total = chunk_total(0)
    if chunks > 1:
        def body(index, running):
            return index + 1, tf.reduce_logsumexp(tf.stack([running, chunk_total(index)]), axis=0)

        _, total = tf.while_loop(lambda index, _: index < chunks, body, (tf.constant(1), total),
                                 parallel_iterations=1)
    return total - math.log(num_samples)


def iwae_log_likelihood(model: Evaluated, images, num_samples: int = 1000, seed=0, chunk_size: int | None = None,
                        condition=None):
    """The k-sample importance-weighted estimate of log p(x) (or log p(x|y)) per image: -> (B,).

    log p(x) ~= log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x). It is a lower
    bound that tightens as k grows (k = 1 is the ELBO). The k draws are taken in chunks,
    one after another (`importance_log_mean_exp`), so that k = 5000 fits in memory.

    Args:
        model: an `Evaluated` model.
        images: the model's x, (B, H, W, C) floats.
        num_samples: k, a Python int.
        seed: an int or an int64[2] tensor.
        chunk_size: draws per chunk; by default as many as `IWAE_MEMORY_BUDGET` allows.
        condition: the condition vectors (B, C) of q(z|x, y) and p(x|z, y), or None.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    z_mean, z_log_var = model.posterior(images, condition)  # (B, D)
    log_prior = model.prior.log_density()  # (the VampPrior's components computed once)
    chunk_size = chunk_size_for(images, num_samples, chunk_size)
    if condition is not None:
        condition = tf.convert_to_tensor(condition, tf.float32)

    def log_weights(count, chunk_seed):
        z = posterior_draws(z_mean, z_log_var, count, chunk_seed)  # (c, B, D)
        flat_z = tf.reshape(z, (-1, z.shape[-1]))  # (c*B, D)
        tiled_condition = None if condition is None else tile_draws(condition, count)  # (c*B, C)
        params = model.decode_params(flat_z, tiled_condition)
        log_px_z = -tf.reshape(model.likelihood.nll(tile_draws(images, count), params), (count, -1))
        return log_px_z + log_prior(z) - losses.log_diag_normal(z, z_mean[None], z_log_var[None])  # (c, B)

    return importance_log_mean_exp(log_weights, num_samples, seed, chunk_size)


def kl_per_unit(model: Evaluated, images, condition=None):
    """The KL of each latent unit for each x (given c): -> (B, D).

    Closed form to N(0, I). For the VampPrior, whose mixture does not factorise over
    units, each unit's KL to its own marginal of the mixture (`priors.mixture_kl_per_unit`).
    """
    return model.prior.kl_per_unit(*model.posterior(images, condition))
