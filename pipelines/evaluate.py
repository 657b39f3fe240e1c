"""Test-set evaluation: negative ELBO, IWAE negative log-likelihood and active units, and
whatever else a model kind reports per example (M2: marginal -log p(x), accuracy).

Memory: the evaluation graph of one image with one importance sample is traced and its
tensors counted (`floats_per_image_sample`): everything that multiplies a chunk (the
classes M2 sums over, a second stochastic layer, a convolutional decoder's activations)
is in that count. Batches and importance-sample chunks are then sized so that one chunk
holds at most `EVAL_MEMORY_BUDGET` bytes of such tensors, and the chunks run one after
another (`model.evaluation.importance_log_mean_exp`): the peak does not grow with k, with
the number of test images or with the kind.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import weakref

import keras
import numpy as np
import tensorflow as tf

from model import evaluation

log = logging.getLogger(__name__)

# A latent unit is active when its average KL to the prior exceeds this many nats.
ACTIVE_UNIT_THRESHOLD = 0.01
# Bytes of evaluation tensors (float32, every tensor of the traced graph counted, so an
# upper bound on what is live) that one chunk of images x importance samples may hold.
EVAL_MEMORY_BUDGET = 2**30
# The default k of the test IWAE: the largest of IWAE_K_STEPS whose evaluation work,
# k x the floats one image-sample holds (`floats_per_image_sample`), stays within
# DEFAULT_EVAL_WORK: 1000 for the default MLP VAE (about 48k floats), 100 for the
# convolutional VAE (about 470k) and the MLP M2 (its K classes each get k samples), 10 for
# the convolutional M2. train.iwae_k asks for another k.
IWAE_K_STEPS = (1000, 500, 200, 100, 50, 20, 10, 5, 2, 1)
DEFAULT_EVAL_WORK = 5 * 10**7
# Seconds between two progress lines when the evaluation logs instead of drawing a bar.
PROGRESS_SECONDS = 15.0


def _graph_floats(vae, batch: int) -> int:
    """Float values of every tensor of the traced evaluation of `batch` images, k = 1."""
    shape = vae.image_shape
    terms = tf.function(lambda images, labels: vae.evaluation_terms(
        images, labels, 1, tf.constant([0, 0], tf.int64), chunk_size=1))
    graph = terms.get_concrete_function(tf.TensorSpec((batch, *shape), tf.float32),
                                        tf.TensorSpec((batch,), tf.int64)).graph
    return sum(tensor.shape.num_elements() for op in graph.get_operations() for tensor in op.outputs
               if tensor.dtype.is_floating and tensor.shape.is_fully_defined())


def floats_per_image_sample(vae) -> int:
    """The float values the evaluation holds per (image, importance sample): the growth of
    the traced graph's tensors from one image to two (weights and other per-batch
    constants cancel out). Traced once per model: the default k and the plan both ask."""
    if vae not in _FLOATS:
        _FLOATS[vae] = max(1, _graph_floats(vae, 2) - _graph_floats(vae, 1))
    return _FLOATS[vae]


# `floats_per_image_sample` of each model alive (its evaluation graph does not change).
_FLOATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def resolve_iwae_k(vae, iwae_k: int | None) -> tuple[int, str]:
    """(k, how it was chosen): `iwae_k` when set, otherwise the model's default (see
    `IWAE_K_STEPS`)."""
    if iwae_k is not None:
        return int(iwae_k), "train.iwae_k"
    floats = floats_per_image_sample(vae)
    k = next((k for k in IWAE_K_STEPS if k * floats <= DEFAULT_EVAL_WORK), IWAE_K_STEPS[-1])
    return k, f"the default for this model: {floats:,} floats per image-sample"


@dataclasses.dataclass(frozen=True)
class EvaluationPlan:
    """How a test evaluation is cut to fit `EVAL_MEMORY_BUDGET`.

    Attributes:
        batch_size: images per evaluation batch (at most the asked batch size).
        chunk_size: importance samples per image drawn at once.
        floats_per_image_sample: `floats_per_image_sample` of the model.
    """

    batch_size: int
    chunk_size: int
    floats_per_image_sample: int

    @property
    def peak_bytes(self) -> int:
        """The bound on one chunk's tensors: batch x chunk x floats x 4 bytes."""
        return self.batch_size * self.chunk_size * self.floats_per_image_sample * 4


def plan_evaluation(vae, iwae_k: int, batch_size: int, budget: int = EVAL_MEMORY_BUDGET) -> EvaluationPlan:
    """The batch and chunk sizes that keep one chunk of the evaluation within `budget` bytes."""
    floats = floats_per_image_sample(vae)
    rows = max(1, budget // (4 * floats))  # (image, sample) pairs per chunk
    batch = max(1, min(batch_size, rows))
    return EvaluationPlan(batch, max(1, min(iwae_k, rows // batch)), floats)


def evaluate(vae, dataset: tf.data.Dataset, *, iwae_k: int, batch_size: int, seed: int = 0,
             num_examples: int | None = None, verbose: bool = True, what: str = "test") -> dict:
    """Evaluates `vae` on batches of `(images, labels)` through `vae.evaluation_terms`.

    Batches larger than `plan_evaluation` allows are split; progress is a bar (`verbose`)
    or a log line every `PROGRESS_SECONDS` (images done, images/s, time left).

    Returns:
        A dict with `test_nelbo` (single-sample negative ELBO, nats per example),
        `test_iwae_nll` (-log p(x) estimated with `iwae_k` importance samples; -log p(x|y)
        for a conditional model), `test_reconstruction`, `test_kl`, `kl_per_unit`,
        `active_units`, `eval_examples`, `eval_seconds` and `eval_plan` (the batch and
        chunk sizes used, and their memory bound), plus `test_<name>` for every other
        per-example term the model reports (M2: `test_marginal_nelbo`,
        `test_marginal_iwae_nll` of -log p(x), and `test_accuracy`). A model with more
        than one stochastic layer (`vae.latent_layers`) also gets `active_units_<layer>`
        and `test_kl_<layer>` (the sum of that layer's units' KLs) for each layer.
    """
    shape = vae.image_shape
    plan = plan_evaluation(vae, iwae_k, batch_size)
    if plan.batch_size < batch_size:
        dataset = dataset.rebatch(plan.batch_size)

    @tf.function(input_signature=[
        tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((None,), tf.int64),
        tf.TensorSpec((2,), tf.int64),
    ], reduce_retracing=True)
    def evaluate_batch(images, labels, batch_seed):
        terms = vae.evaluation_terms(images, labels, iwae_k, batch_seed, chunk_size=plan.chunk_size)
        return {name: tf.reduce_sum(value, axis=0) for name, value in terms.items()}

    start = time.perf_counter()
    totals: dict[str, np.ndarray] = {}
    count = 0
    progress = Progress(num_examples, what, bar=verbose)
    for index, (images, labels) in enumerate(dataset):
        batch_seed = tf.constant([seed, index], tf.int64)
        sums = evaluate_batch(images, tf.cast(labels, tf.int64), batch_seed)
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + value.numpy().astype(np.float64)
        count += int(images.shape[0])
        progress.update(count)
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
        **layer_units(kl_per_unit, vae.latent_layers),
        "eval_examples": count,
        "eval_seconds": time.perf_counter() - start,
        "eval_plan": {"batch_size": plan.batch_size, "chunk_size": plan.chunk_size,
                      "bound_mb": round(plan.peak_bytes / 2**20, 1)},
    }


class Progress:
    """Images done, rate and time left of an evaluation: a Keras progress bar on a
    terminal (`bar`), otherwise a log line every `PROGRESS_SECONDS` and at the end."""

    def __init__(self, total: int | None, what: str, bar: bool):
        self.total, self.what = total, what
        self.bar = keras.utils.Progbar(total, unit_name="image") if bar else None
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done)
            return
        now = time.perf_counter()
        finished = self.total is not None and done >= self.total
        if now - self.last < PROGRESS_SECONDS and not finished:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        if self.total:
            left = (self.total - done) / rate if rate > 0 else float("inf")
            log.info("evaluated %d/%d %s images (%.0f images/s, about %.0f s left)",
                     done, self.total, self.what, rate, left)
        else:
            log.info("evaluated %d %s images (%.0f images/s)", done, self.what, rate)


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
