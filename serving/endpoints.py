"""The exported signatures' functions, each written once and assembled per served kind.

A model declares what it serves (`takes_labels`, `classifies`, `completes`, `num_classes`);
`served_kind` turns that into a served kind, and `endpoints` picks that kind's signatures
(`contract.signatures_for`) from the functions below. A function takes class labels
exactly when its signature does: the traced `inputs` then hold `labels`, which are checked
and passed on to the model (`encode(images, labels)`, ...), where the model's default is
None. So the plain VAE, a label CVAE, M2 and a half CVAE share one `encode`, one
`reconstruct`, one `log_likelihood`, and so on.

Every function takes and returns a dict keyed by the contract. The checks run in the graph:
TF Serving answers INVALID_ARGUMENT with their message when one fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from serving import contract as C

Endpoint = Callable[[dict[str, Any]], dict[str, Any]]  # inputs by key -> outputs by key


def served_kind(model) -> str:
    """The served kind (`contract.PLAIN_KIND`, ...) of a model object, from what it declares
    it serves: its `takes_labels`, `classifies` and `completes`."""
    return C.kind_of_features(model.takes_labels, model.classifies, model.completes)


def endpoints(model) -> dict[str, Endpoint]:
    """The signature functions of `model`'s served kind by name, in the contract's order.

    Args:
        model: a built model of any kind: `encode`, `decode`, `reconstruct`,
            `log_likelihood`, `prior`, `prior_draw`, `decode_draw`, `draw_dim`, its
            `condition` (`one_hot`, `vector`, `assemble`) and what it declares it serves
            (`takes_labels`, `classifies` with `classify`, `completes`, `num_classes`).
    """
    return _Endpoints(model).for_kind(served_kind(model))


def _assert(condition, message: str):
    """An in-graph check: TF Serving answers INVALID_ARGUMENT with `message` when it fails."""
    return tf.debugging.Assert(condition, [message])


def _after(checks: list, *tensors) -> tuple:
    """`tensors` behind the in-graph `checks`: what is computed from them runs after the
    checks, so a bad request fails with the check's message, not with a later op's."""
    with tf.control_dependencies(checks):
        return tuple(tf.identity(t) for t in tensors)


def _f32(tensor):
    """Outputs are float32 whatever the model computes in (mixed precision)."""
    return tf.cast(tensor, tf.float32)


def _check_rows(tensor) -> None:
    _assert(tf.shape(tensor)[0] <= C.MAX_BATCH, f"at most {C.MAX_BATCH} rows per request")


def _check_temperature(temperature):
    return _assert(tf.reduce_all(tf.math.is_finite(temperature)), f"{C.TEMPERATURE} must be finite")


class _Endpoints:
    """Every signature function, over one model (see `endpoints`).

    What the prior computes from trained weights (the VampPrior's posteriors at its
    pseudo-inputs; None for N(0, I)) is frozen into the export here: `generate` does not
    re-encode it.
    """

    def __init__(self, model):
        self.model = model
        self.iwae_seed = tf.constant(C.IWAE_SEED, tf.int64)
        components = model.prior.components()
        self.components = (None if components is None
                           else tuple(tf.constant(np.asarray(c, np.float32)) for c in components))

    def for_kind(self, kind: str) -> dict[str, Endpoint]:
        functions = {
            C.GENERATE: self.generate, C.GENERATE_BATCH: self.generate_batch, C.ENCODE: self.encode,
            C.DECODE: self.decode, C.RECONSTRUCT: self.reconstruct, C.LOG_LIKELIHOOD: self.log_likelihood,
            C.CLASSIFY: self.classify, C.COMPLETE: self.complete,
        }
        return {name: functions[name] for name in C.signatures_for(kind)}

    # === Checks and draws ===
    def _rows(self, inputs, key: str) -> tuple[Any, Any]:
        """(rows, labels): `inputs[key]` behind the row limit and, when the signature takes
        labels, behind the label checks; labels None when it does not."""
        rows = inputs[key]
        _check_rows(rows)
        if C.LABELS not in inputs:
            return rows, None
        labels, rows = self._labels(inputs[C.LABELS], rows)
        return rows, labels

    def _labels(self, labels, *rows) -> tuple:
        """(labels, *rows) behind the checks of labels in [0, K), within the limit, one per row."""
        num_classes = self.model.num_classes
        checks = [
            _assert(tf.reduce_all((labels >= 0) & (labels < num_classes)),
                    f"{C.LABELS} must be within [0, {num_classes})"),
            _assert(tf.size(labels) <= C.MAX_BATCH, f"at most {C.MAX_BATCH} {C.LABELS} per request"),
        ]
        checks += [_assert(tf.equal(tf.shape(labels)[0], tf.shape(r)[0]), f"one of {C.LABELS} per row")
                   for r in rows]
        return _after(checks, labels, *rows)

    def _counts(self, num_samples, temperature) -> tuple:
        """(num_samples, temperature) of a generate request behind their checks."""
        return _after([
            _assert(tf.reduce_all((num_samples >= 0) & (num_samples <= C.MAX_NUM_SAMPLES)),
                    f"{C.NUM_SAMPLES} must be within [0, {C.MAX_NUM_SAMPLES}]"),
            _check_temperature(temperature),
        ], num_samples, temperature)

    def _draw(self, count, seed, temperature):  # -> (count, draw_dim)
        """The prior's draws behind `generate`: N(0, T^2 I) codes, the VampPrior's mixture,
        or a two-layer model's top code and noise."""
        return self.model.prior_draw(count, seed, temperature, self.components)

    def _condition(self, labels):
        """The decoder's condition vector of `labels` (their one-hot), or None."""
        return None if labels is None else self.model.condition.one_hot(labels)

    # === The signatures ===
    def generate(self, inputs):
        if C.LABELS in inputs:  # one image per label, decoded with its one-hot condition
            (labels,) = self._labels(inputs[C.LABELS])
            _check_temperature(inputs[C.TEMPERATURE])
            z = self._draw(tf.shape(labels)[0], inputs[C.SEED], inputs[C.TEMPERATURE])
            return {C.IMAGES: _f32(self.model.decode(z, self._condition(labels))), C.Z: z}
        num_samples, temperature = self._counts(inputs[C.NUM_SAMPLES], inputs[C.TEMPERATURE])
        return self._decoded(self._draw(num_samples, inputs[C.SEED], temperature))

    def generate_batch(self, inputs):
        """`generate`'s draws for each (num_samples, seed, temperature) row, concatenated."""
        counts, temperatures = self._counts(inputs[C.NUM_SAMPLES], inputs[C.TEMPERATURE])
        seeds = inputs[C.SEED]
        (counts,) = _after([_assert(tf.reduce_sum(counts) <= C.MAX_BATCH, f"at most {C.MAX_BATCH} rows per request")],
                         counts)
        size, width = tf.shape(counts)[0], int(self.model.draw_dim)
        parts = tf.TensorArray(tf.float32, size=size, infer_shape=False, element_shape=[None, width])
        _, parts = tf.while_loop(
            lambda i, _: i < size,
            lambda i, ta: (i + 1, ta.write(i, self._draw(counts[i], seeds[i], temperatures[i]))),
            (tf.constant(0), parts),
        )
        return self._decoded(tf.reshape(parts.concat(), (-1, width)))  # (sum(num_samples), ...)

    def _decoded(self, draws):
        images, z = self.model.decode_draw(draws)
        return {C.IMAGES: _f32(images), C.Z: _f32(z)}

    def encode(self, inputs):
        images, labels = self._rows(inputs, C.IMAGES)
        z_mean, z_log_var = self.model.encode(images, labels)
        return {C.Z_MEAN: _f32(z_mean), C.Z_LOG_VAR: _f32(z_log_var)}

    def decode(self, inputs):
        z, labels = self._rows(inputs, C.Z)
        return {C.IMAGES: _f32(self.model.decode(z, self._condition(labels)))}

    def reconstruct(self, inputs):
        images, labels = self._rows(inputs, C.IMAGES)
        return {C.IMAGES: _f32(self.model.reconstruct(images, labels))}

    def log_likelihood(self, inputs):
        """The IWAE score of each image (with its label), drawn per image with the fixed
        seed: a score does not depend on the other images of the request."""
        images, labels = self._rows(inputs, C.IMAGES)

        def score(image, label=None):
            label = None if label is None else label[None]
            return _f32(self.model.log_likelihood(image[None], num_samples=C.IWAE_NUM_SAMPLES,
                                                  seed=self.iwae_seed, labels=label)[0])

        if labels is None:
            scores = tf.map_fn(score, images, fn_output_signature=tf.float32)
        else:
            scores = tf.map_fn(lambda pair: score(*pair), (images, labels), fn_output_signature=tf.float32)
        return {C.LOG_LIKELIHOOD_KEY: scores}

    def classify(self, inputs):
        images, _ = self._rows(inputs, C.IMAGES)
        return {C.PROBABILITIES: _f32(self.model.classify(images))}

    def complete(self, inputs):
        images, _ = self._rows(inputs, C.IMAGES)
        _check_temperature(inputs[C.TEMPERATURE])
        z = self._draw(tf.shape(images)[0], inputs[C.SEED], inputs[C.TEMPERATURE])
        condition = self.model.condition
        generated = self.model.decode(z, condition.vector(images))
        return {C.IMAGES: _f32(condition.assemble(images, _f32(generated)))}
