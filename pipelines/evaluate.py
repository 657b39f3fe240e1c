"""Test-set evaluation: negative ELBO, IWAE negative log-likelihood and active units."""

from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np
import tensorflow as tf

from model import evaluation, losses

log = logging.getLogger(__name__)

# A latent unit is active when its average KL to the prior exceeds this many nats.
ACTIVE_UNIT_THRESHOLD = 0.01


def evaluate(vae, dataset: tf.data.Dataset, *, iwae_k: int, batch_size: int, seed: int = 0,
             num_examples: int | None = None, verbose: bool = True) -> dict:
    """Evaluates `vae` on batches of `(images, labels)`.

    Returns:
        A dict with `test_nelbo` (single-sample negative ELBO, nats per example),
        `test_iwae_nll` (-log p(x) estimated with `iwae_k` importance samples),
        `test_reconstruction`, `test_kl`, `kl_per_unit`, `active_units`,
        `eval_examples` and `eval_seconds`.
    """
    shape = vae.image_shape
    chunk = evaluation.iwae_chunk_size(batch_size, shape, iwae_k)

    @tf.function(input_signature=[
        tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((2,), tf.int64)
    ], reduce_retracing=True)
    def evaluate_batch(images, batch_seed):
        z_mean, z_log_var = vae.encode(images)
        kl_units = losses.kl_per_unit(z_mean, z_log_var)
        nelbo = evaluation.negative_elbo(vae, images, batch_seed)
        iwae = evaluation.iwae_log_likelihood(vae, images, iwae_k, batch_seed, chunk_size=chunk)
        return nelbo, -iwae, kl_units

    start = time.perf_counter()
    totals = {"nelbo": 0.0, "iwae_nll": 0.0}
    kl_units = None
    count = 0
    bar = keras.utils.Progbar(num_examples, unit_name="image") if verbose else None
    for index, (images, _) in enumerate(dataset):
        batch_seed = tf.constant([seed, index], tf.int64)
        nelbo, nll, kl = evaluate_batch(images, batch_seed)
        totals["nelbo"] += float(tf.reduce_sum(nelbo))
        totals["iwae_nll"] += float(tf.reduce_sum(nll))
        batch_kl = tf.reduce_sum(kl, axis=0).numpy()
        kl_units = batch_kl if kl_units is None else kl_units + batch_kl
        count += int(images.shape[0])
        if bar is not None:
            bar.update(count)
    if count == 0:
        raise ValueError("the evaluation split is empty")
    kl_per_unit = kl_units / count
    nelbo = totals["nelbo"] / count
    kl_mean = float(kl_per_unit.sum())
    return {
        "test_nelbo": nelbo,
        "test_iwae_nll": totals["iwae_nll"] / count,
        "test_reconstruction": nelbo - kl_mean,
        "test_kl": kl_mean,
        "iwae_k": iwae_k,
        "kl_per_unit": [float(v) for v in kl_per_unit],
        "active_units": int(np.sum(kl_per_unit > ACTIVE_UNIT_THRESHOLD)),
        "eval_examples": count,
        "eval_seconds": time.perf_counter() - start,
    }


def bits_per_dim(nats: float, image_shape) -> float:
    """Nats per example -> bits per pixel value."""
    return nats / (math.prod(image_shape) * math.log(2.0))
