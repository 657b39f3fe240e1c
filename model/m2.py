"""The semi-supervised M2 model (Kingma et al. 2014): a label CVAE plus a classifier q(y|x).

Shapes: B = batch, K = classes, D = latent dimensions; images are (B, H, W, C).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from model import evaluation
from model.classifiers import build_classifier, build_shift
from model.config import ConfigError
from model.draws import tile_draws
from model.cvae import CVAE
from model.layers import PACKAGE
from model.vae import split_batch


@keras.saving.register_keras_serializable(package=PACKAGE)
class M2(CVAE):
    """M2: p(x|z, y) p(z) p(y) with p(y) uniform over K classes, q(z|x, y) and q(y|x).

    Batches are `(images, labels)` with the label -1 on unlabelled examples; labelled
    and unlabelled examples mix freely in a batch. With L(x, y) = -log p(x|z, y)
    + KL(q(z|x, y) || p(z)) + log K, the negative ELBO of -log p(x, y), each example
    costs

        labelled:   L(x, y) + alpha * (-log q(y|x))
        unlabelled: sum_y q(y|x) L(x, y) - H(q(y|x))      (a bound on -log p(x))

    The sum over y is exact and vectorised: the batch is tiled K times (K * B rows) and
    every class is encoded and decoded at once. As in the VAE, the KL part goes to
    `add_loss` (the batch mean of sum_y w_y KL_y, weighted by `kl_weight`; w is the
    one-hot label or q(y|x)) and the rest is the per-example `loss` of `loss_terms`, so
    `mean(loss) + sum(losses)` is the M2 objective.

    Reported terms (each per example, averaged by the trainer): `reconstruction` and
    `kl` (expected over w), `classification` (-log q(y|x) of labelled examples, 0 for
    unlabelled ones), `entropy` (H(q(y|x)) of every example), `accuracy` (1 when a
    labelled example is classified right) and `labelled` (1 for labelled examples):
    `classification / labelled` is the mean over the labelled examples.

    Args:
        model_config: a `ModelConfig` (or its dict) with `kind="m2"` and `m2.alpha` set.
        seed: seed of the sampling noise.

    Example:
        >>> m2 = M2(ModelConfig(kind="m2", m2=M2Config(alpha=6.0)))
        >>> terms = m2.loss_terms((images, tf.constant([3, -1, -1, 7])))
        >>> probabilities = m2.classify(images)  # (B, 10)
    """

    LOSS_TERMS = ("loss", "reconstruction", "kl", "classification", "entropy", "accuracy", "labelled")

    def __init__(self, model_config=None, seed: int | None = None, **kwargs):
        super().__init__(model_config, seed=seed, **kwargs)
        if self.model_config.m2.alpha is None:
            raise ConfigError("ModelConfig.m2.alpha must be a number for model.kind='m2' (the "
                              "training pipeline sets the paper's 0.1 * N / N_labelled), got None")
        # === Layers ===
        self.classifier = build_classifier(self.model_config)
        self.classifier_shift = build_shift(self.model_config, seed)

    # === The classifier ===
    def classifier_logits(self, images):
        """The logits of q(y|x): (B, H, W, C) -> (B, K) float32."""
        return ops.cast(self.classifier(ops.convert_to_tensor(images, "float32")), "float32")

    def classify(self, images):
        """q(y|x), the class probabilities of each image: (B, H, W, C) -> (B, K)."""
        return ops.softmax(self.classifier_logits(images), axis=-1)

    # === Every class at once ===
    def _tile_classes(self, images):
        """Each image with each class: (K * B, H, W, C) images, (K * B, K) one-hot rows;
        row k * B + b holds image b with class k."""
        count = self.num_classes
        tiled = tile_draws(images, count)
        classes = tf.repeat(tf.range(count), tf.shape(images)[0])
        return tiled, self.condition.one_hot(classes)

    def _per_class(self, values):
        """(K * B,) rows of `_tile_classes` -> (B, K)."""
        return tf.transpose(tf.reshape(values, (self.num_classes, -1)))

    @staticmethod
    def _weights(labels, q):
        """w: the one-hot label of labelled examples, q(y|x) of unlabelled ones: (B, K)."""
        labelled = labels >= 0
        one_hot = tf.one_hot(tf.where(labelled, labels, 0), tf.shape(q)[-1], dtype=q.dtype)
        return tf.where(labelled[:, None], one_hot, q)

    @staticmethod
    def _labels(images, labels):
        """The labels of a batch as int32, all -1 (unlabelled) when there are none."""
        if labels is None:
            return -tf.ones(tf.shape(images)[:1], tf.int32)
        return tf.cast(labels, tf.int32)

    # === The objective ===
    def call(self, inputs, training=None, seed=None, classifier_input=None):
        """Classifies, then encodes and decodes every image with every class; adds the
        expected KL (weighted by `kl_weight`) with `add_loss`. `classifier_input`: what
        the classifier sees in place of the images (M1+M2's codes of shifted images)."""
        images, labels = split_batch(inputs)
        images = ops.convert_to_tensor(images, "float32")
        labels = self._labels(images, labels)
        seen = images if self.classifier_shift is None else self.classifier_shift(images, training=bool(training))
        if classifier_input is not None:
            seen = classifier_input
        logits = self.classifier_logits(seen)  # (B, K); of shifted images while training with a shift
        tiled, c = self._tile_classes(images)  # (K*B, H, W, C), (K*B, K)
        z_mean, z_log_var = self.posterior(tiled, c)  # (K*B, D)
        z = self.sampling([z_mean, z_log_var], seed=seed)  # (K*B, D)
        params = self.decode_params(z, c)  # (K*B, H, W, C)
        reconstruction = self._per_class(self.likelihood.nll(tiled, params))  # (B, K)
        kl = self._per_class(self.prior.kl(z, z_mean, z_log_var))  # (B, K)
        weights = self._weights(labels, ops.softmax(logits, axis=-1))  # (B, K)
        expected_kl = ops.sum(weights * kl, axis=-1)  # (B,)
        self.add_loss(ops.cast(self.kl_weight(training), "float32") * ops.mean(expected_kl))
        return {"logits": logits, "labels": labels, "weights": weights, "kl": expected_kl,
                "reconstruction_per_class": reconstruction, "kl_per_class": kl, "z": z}

    def terms_of(self, batch, outputs) -> dict:
        """`loss_terms` (see the class docstring) from the outputs of a forward pass."""
        labels, weights = outputs["labels"], outputs["weights"]
        labelled = labels >= 0  # (B,)
        log_q = tf.nn.log_softmax(outputs["logits"])  # (B, K)
        one_hot = tf.one_hot(tf.where(labelled, labels, 0), self.num_classes)
        cross_entropy = -tf.reduce_sum(one_hot * log_q, axis=-1)  # (B,)
        entropy = -tf.reduce_sum(tf.exp(log_q) * log_q, axis=-1)  # (B,)
        reconstruction = tf.reduce_sum(weights * outputs["reconstruction_per_class"], axis=-1)
        alpha = float(self.model_config.m2.alpha)
        loss = reconstruction + math.log(self.num_classes) + tf.where(
            labelled, alpha * cross_entropy, -entropy)
        is_labelled = tf.cast(labelled, tf.float32)
        correct = tf.cast(tf.equal(tf.argmax(log_q, axis=-1, output_type=tf.int32), labels), tf.float32)
        return {"loss": loss, "reconstruction": reconstruction, "kl": outputs["kl"],
                "classification": cross_entropy * is_labelled, "entropy": entropy,
                "accuracy": correct * is_labelled, "labelled": is_labelled}

    # === Evaluation ===
    def _class_nelbo(self, images, seed):
        """The negative conditional ELBO of each image with each class: (B, K) nats."""
        tiled, c = self._tile_classes(ops.convert_to_tensor(images, "float32"))
        return self._per_class(evaluation.negative_elbo(self, tiled, seed, c))

    def negative_elbo(self, images, seed=0, labels=None):
        """With labels: the negative ELBO of -log p(x|y). Without: of -log p(x), summed
        over classes, sum_y q(y|x) (nelbo_y + log K) - H(q(y|x)). -> (B,) nats."""
        if labels is not None:
            return super().negative_elbo(images, seed, labels=labels)
        nelbo = self._class_nelbo(images, seed)  # (B, K)
        log_q = tf.nn.log_softmax(self.classifier_logits(images))
        q = tf.exp(log_q)
        return tf.reduce_sum(q * (nelbo + math.log(self.num_classes) + log_q), axis=-1)

    def log_likelihood(self, images, num_samples: int = 1000, seed=0, chunk_size: int | None = None,
                       labels=None):
        """With labels: the IWAE estimate of log p(x|y). Without: of the marginal log p(x)
        = log sum_y p(y) p(x|y), every class with its own k importance samples. -> (B,)."""
        if labels is not None:
            return super().log_likelihood(images, num_samples, seed, chunk_size, labels=labels)
        images = ops.convert_to_tensor(images, "float32")
        chunk_size = evaluation.chunk_size_for(images, num_samples, chunk_size)
        tiled, c = self._tile_classes(images)
        log_px_y = evaluation.iwae_log_likelihood(
            self, tiled, num_samples, seed, max(1, chunk_size // self.num_classes), c)
        return tf.reduce_logsumexp(self._per_class(log_px_y), axis=-1) - math.log(self.num_classes)

    def kl_per_unit(self, images, labels=None):
        """The KL of each latent unit, at the label, or expected over q(y|x) where the
        label is -1 or missing: -> (B, D) nats."""
        images = ops.convert_to_tensor(images, "float32")
        labels = self._labels(images, labels)
        tiled, c = self._tile_classes(images)
        kl = evaluation.kl_per_unit(self, tiled, c)  # (K*B, D)
        kl = tf.reshape(kl, (self.num_classes, -1, self.latent_dim))  # (K, B, D)
        weights = self._weights(labels, self.classify(images))  # (B, K)
        return tf.einsum("bk,kbd->bd", weights, kl)

    def evaluation_terms(self, images, labels=None, num_samples: int = 1000, seed=0,
                         chunk_size: int | None = None) -> dict:
        """The CVAE's terms given the labels (-log p(x|y)), the marginal `marginal_nelbo`
        and `marginal_iwae_nll` (-log p(x)), and the classifier's `accuracy`."""
        terms = super().evaluation_terms(images, labels, num_samples, seed, chunk_size)
        terms.update(
            marginal_nelbo=self.negative_elbo(images, seed),
            marginal_iwae_nll=-self.log_likelihood(images, num_samples, seed, chunk_size),
        )
        if labels is not None:
            predicted = tf.argmax(self.classifier_logits(images), axis=-1)
            terms["accuracy"] = tf.cast(tf.equal(predicted, tf.cast(labels, tf.int64)), tf.float32)
        return terms

    # === Public methods ===
    def inputs_of(self, images, labels=None):
        """(x, one-hot y); where a label is -1 or missing, y is the classifier's most
        likely class."""
        predicted = tf.argmax(self.classifier_logits(images), axis=-1)  # (B,)
        if labels is not None:
            labels = tf.cast(labels, tf.int64)
            predicted = tf.where(labels >= 0, labels, predicted)
        return super().inputs_of(images, predicted)
