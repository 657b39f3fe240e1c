"""Test-set evaluation: negative ELBO, IWAE negative log-likelihood and active units, and
whatever else a model kind reports per example (M2: marginal -log p(x), accuracy)."""

from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np
import tensorflow as tf

from model import evaluation

log = logging.getLogger(__name__)

# A latent unit is active when its average KL to the prior exceeds this many nats.
ACTIVE_UNIT_THRESHOLD = 0.01


def evaluate(vae, dataset: tf.data.Dataset, *, iwae_k: int, batch_size: int, seed: int = 0,
             num_examples: int | None = None, verbose: bool = True) -> dict:
    """Evaluates `vae` on batches of `(images, labels)` through `vae.evaluation_terms`.

    Returns:
        A dict with `test_nelbo` (single-sample negative ELBO, nats per example),
        `test_iwae_nll` (-log p(x) estimated with `iwae_k` importance samples; -log p(x|y)
        for a conditional model), `test_reconstruction`, `test_kl`, `kl_per_unit`,
        `active_units`, `eval_examples` and `eval_seconds`, plus `test_<name>` for every
        other per-example term the model reports (M2: `test_marginal_nelbo`,
        `test_marginal_iwae_nll` of -log p(x), and `test_accuracy`). A model with more
        than one stochastic layer (`vae.latent_layers`) also gets `active_units_<layer>`
        and `test_kl_<layer>` (the sum of that layer's units' KLs) for each layer.
    """
    shape = vae.image_shape
    chunk = evaluation.iwae_chunk_size(batch_size, shape, iwae_k)

    @tf.function(input_signature=[
        tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((None,), tf.int64),
        tf.TensorSpec((2,), tf.int64),
    ], reduce_retracing=True)
    def evaluate_batch(images, labels, batch_seed):
        terms = vae.evaluation_terms(images, labels, iwae_k, batch_seed, chunk_size=chunk)
        return {name: tf.reduce_sum(value, axis=0) for name, value in terms.items()}

    start = time.perf_counter()
    totals: dict[str, np.ndarray] = {}
    count = 0
    bar = keras.utils.Progbar(num_examples, unit_name="image") if verbose else None
    for index, (images, labels) in enumerate(dataset):
        batch_seed = tf.constant([seed, index], tf.int64)
        sums = evaluate_batch(images, tf.cast(labels, tf.int64), batch_seed)
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + value.numpy().astype(np.float64)
        count += int(images.shape[0])
        if bar is not None:
            bar.update(count)
    if count == 0:
        raise ValueError("the evaluation split is empty")
    means = {name: value / count for name, value in totals.items()}
    kl_per_unit = means.pop("kl_per_unit")
    nelbo = float(means.pop("nelbo"))
    # The ELBO's KL: reported by the model when the units' KLs do not add up to it.
    kl_mean = float(means.pop("kl")) if "kl" in means else float(kl_per_unit.sum())
    return {
        "test_nelbo": nelbo,
        "test_iwae_nll": float(means.pop("iwae_nll")),
        "test_reconstruction": nelbo - kl_mean,
        "test_kl": kl_mean,
        **{f"test_{name}": float(value) for name, value in means.items()},
        "iwae_k": iwae_k,
        "kl_per_unit": [float(v) for v in kl_per_unit],
        "active_units": int(np.sum(kl_per_unit > ACTIVE_UNIT_THRESHOLD)),
        **layer_units(kl_per_unit, getattr(vae, "latent_layers", ())),
        "eval_examples": count,
        "eval_seconds": time.perf_counter() - start,
    }


def layer_units(kl_per_unit, latent_layers) -> dict:
    """`active_units_<layer>` and `test_kl_<layer>` of each stochastic layer of a model
    with more than one (`latent_layers`: (name, units) in the order of the units)."""
    if len(latent_layers) < 2:
        return {}
    out, start = {}, 0
    for name, units in latent_layers:
        part = np.asarray(kl_per_unit[start:start + units])
        out[f"active_units_{name}"] = int(np.sum(part > ACTIVE_UNIT_THRESHOLD))
        out[f"test_kl_{name}"] = float(part.sum())
        start += units
    return out


def bits_per_dim(nats: float, image_shape) -> float:
    """Nats per example -> bits per pixel value."""
    return nats / (math.prod(image_shape) * math.log(2.0))
