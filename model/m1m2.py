"""M1+M2 (Kingma et al. 2014): an M2 whose x is the code of a VAE (M1) trained first.

Shapes: B = batch, K = classes, D1 = M1's code z1, D2 = M2's code z2; images (B, H, W, C).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
from keras import ops

from model import evaluation, losses
from model.classifiers import build_shift
from model.conditions import make_condition
from model.config import ConfigError, DensityConfig, M1M2Config, M2Config, ModelConfig
from model.draws import posterior_draws, seed_or_fresh, tile_draws
from model.layers import PACKAGE
from model.m2 import M2
from model.vae import VAE, build_networks, split_batch


# The model settings that decide M1's networks, which an M1+M2 copies (its encoder,
# decoder and likelihood); M1's prior and KL weight shaped its training only.
NETWORK_FIELDS = ("image_shape", "architecture", "latent_dim", "hidden_units", "conv_filters", "kernel_size",
                  "activation", "block", "likelihood")


def _fold(seed, salt: int):
    """A stateless seed derived from `seed` (None stays None: the layers' own generators)."""
    return None if seed is None else tf.random.experimental.stateless_fold_in(evaluation.as_seed(seed), salt)


@keras.saving.register_keras_serializable(package=PACKAGE)
class M1M2(VAE):
    """M1+M2: M1 = q(z1|x), p(x|z1), a VAE on the images; M2 = p(z1|z2, y) p(z2) p(y),
    q(z2|z1, y), q(y|z1), the semi-supervised M2 with a Gaussian likelihood over z1.

    The two stages train one after the other, as in the paper. M1 is a plain VAE run
    (kind vae, `first_stage_config`), its weights copied in with `load_first_stage`; here
    they are frozen. This model then trains M2: every batch draws z1 ~ q(z1|x) afresh and
    costs M2's objective on z1 (labelled: the conditional negative ELBO plus alpha times
    -log q(y|z1); unlabelled: the exact sum over classes, `model.m2.M2`), so its
    `LOSS_TERMS`, `add_loss` and objective are M2's over z1.

    The stacked model p(x) = sum_y p(y) int p(x|z1) p(z1|y) dz1 is what it generates and
    scores: `generate(labels)` draws z2 ~ N(0, T^2 I), decodes z1 with M2 (its mean) and
    the image with M1; `encode` serves M2's code z2 (q(z2|z1, y) at M1's mean code; where
    a label is missing, the classifier's class) and `encode_m1` M1's; `classify` is
    q(y|z1) at M1's mean code. The IWAE estimate of log p(x) nests M2's: each of k draws
    z1 ~ q(z1|x) is weighted by p(x|z1) p^(z1) / q(z1|x), with p^(z1) the one-sample
    importance estimate of M2's marginal (one z2 per class, summed over classes), an
    unbiased estimate of p(z1): the result bounds log p(x) from below.

    Args:
        model_config: a `ModelConfig` (or its dict) with `kind="m1m2"`: its own fields
            describe M1, `m1m2` M2's networks over z1 and `m2` M2's options (`m2.alpha` set).
        seed: seed of the sampling noise.

    Example:
        >>> model = M1M2(ModelConfig(kind="m1m2", latent_dim=50, m2=M2Config(alpha=12.0)))
        >>> model.load_first_stage(m1)  # a trained VAE of `M1M2.first_stage_config(config)`
        >>> probabilities = model.classify(images)  # (B, 10)
        >>> images = model.generate([0, 1, 2], seed=0)
    """

    LOSS_TERMS = M2.LOSS_TERMS

    def __init__(self, model_config=None, seed: int | None = None, **kwargs):
        super().__init__(model_config, seed=seed, **kwargs)
        m2 = self.model_config.m2
        if m2.classifier not in (None, "mlp"):
            raise ConfigError("ModelConfig.m2.classifier must be 'mlp' or null for model.kind='m1m2' (its "
                              "classifier sees M1's codes, not images)")
        # === Layers ===
        # M1 (the encoder, decoder and likelihood built by VAE) is trained first and frozen here.
        for layer in (self.encoder, self.decoder, self.likelihood):
            layer.trainable = False
        self.m2 = M2(self.codes_config(self.model_config), seed=None if seed is None else seed + 1, name="m2")
        self.prior = self.m2.prior  # what `generate` draws from: M2's p(z2)
        # `m2.classifier_shift`: the classifier learns from the codes of shifted images.
        self.classifier_shift = build_shift(self.model_config, seed)

    # === The two configs ===
    @staticmethod
    def codes_config(config: ModelConfig) -> ModelConfig:
        """The M2 of the second stage: a Gaussian MLP model of M1's codes, (1, 1, D1) "images"."""
        return ModelConfig(
            kind="m2", image_shape=(1, 1, config.latent_dim), architecture="mlp",
            latent_dim=config.m1m2.latent_dim, hidden_units=config.m1m2.hidden_units,
            activation=config.activation, likelihood="gaussian", beta=config.kl_beta,
            kl_warmup_steps=config.kl_warmup_steps, num_classes=config.num_classes,
            m2=dataclasses.replace(config.m2, classifier="mlp", classifier_shift=0))

    @staticmethod
    def first_stage_config(config: ModelConfig) -> ModelConfig:
        """M1's config: a kind vae with this config's networks and N(0, I), the paper's M1."""
        return dataclasses.replace(config, kind="vae", beta=None, density=DensityConfig(prior="gaussian"),
                                   m2=M2Config(), m1m2=M1M2Config())

    @classmethod
    def first_stage_differences(cls, config: ModelConfig, m1: ModelConfig) -> list[str]:
        """What keeps a trained model of config `m1` from being the M1 of an M1+M2 of
        `config`: another kind, more than one stochastic layer, or networks of other
        settings (`NETWORK_FIELDS`). Its prior and its KL weight may differ: they shaped
        its training, and the copy reads only its encoder, decoder and likelihood."""
        expected = cls.first_stage_config(config)
        differ = [f"model.kind={m1.kind!r} (M1 is a {expected.kind!r})"] if m1.kind != expected.kind else []
        if m1.density.stochastic_layers != 1:
            differ.append(f"model.density.stochastic_layers={m1.density.stochastic_layers} (M1 has 1)")
        return differ + [f"model.{name}={getattr(m1, name)!r} (this M1+M2: {getattr(expected, name)!r})"
                         for name in NETWORK_FIELDS if getattr(m1, name) != getattr(expected, name)]

    def load_first_stage(self, m1: VAE) -> None:
        """Copies a trained M1's weights into this model.

        Raises:
            ConfigError: `m1` cannot be this model's M1 (`first_stage_differences`).
        """
        differ = self.first_stage_differences(self.model_config, m1.model_config)
        if differ:
            raise ConfigError(f"the first stage is not this M1+M2's M1: {'; '.join(differ)}; train M1 with "
                              "the same model settings (or leave train.m1_workdir unset)")
        for mine, theirs in ((self.encoder, m1.encoder), (self.decoder, m1.decoder),
                             (self.likelihood, m1.likelihood)):
            mine.set_weights(theirs.get_weights())

    def make_networks(self, condition_dim: int):
        """M1's (encoder, decoder): unconditioned, over the images."""
        return build_networks(self.model_config, self.image_shape)

    def make_condition(self):
        """The label, as M2 sees it (its one-hot is what `decode` and `generate` take)."""
        return make_condition(self.model_config)

    def set_schedule(self, *, train_samples: int | None = None, kl_warmup_ramp=None) -> None:
        """As `VAE.set_schedule`; the KL warm-up goes to M2, whose KL it weighs."""
        super().set_schedule(train_samples=train_samples, kl_warmup_ramp=kl_warmup_ramp)
        self.m2.set_schedule(kl_warmup_ramp=kl_warmup_ramp)

    def build(self, input_shape=None):
        self.m2.build()
        super().build(input_shape)  # the training path: M1's encoder and M2
        self.decode_params(ops.zeros((1, self.model_config.latent_dim)))  # M1's decoder

    # === What it serves ===
    @property
    def latent_dim(self) -> int:
        """D2: the served code is M2's z2."""
        return self.model_config.m1m2.latent_dim

    @property
    def num_classes(self) -> int:
        return self.condition.num_classes

    @property
    def latent_layers(self) -> tuple[tuple[str, int], ...]:
        return (("z", self.latent_dim),)

    @property
    def kl_sums_units(self) -> bool:
        return False  # the stacked KL part holds M1's log q(z1|x) too (`evaluation_terms`)

    @property
    def draw_dim(self) -> int:
        return self.m2.draw_dim

    # === M1 ===
    def _codes(self, z1):
        """M1's codes as M2's x: (..., D1) -> (N, 1, 1, D1)."""
        return ops.reshape(z1, (-1, 1, 1, self.model_config.latent_dim))

    def encode_m1(self, images):
        """q(z1|x): (z1_mean, z1_log_var), (B, D1) each."""
        return self.posterior(images)

    # === The objective ===
    def call(self, inputs, training=None, seed=None):
        """Draws z1 ~ q(z1|x) (M1 frozen) and runs M2 on it, which adds its weighted
        expected KL with `add_loss`. While training with `m2.classifier_shift`, the
        classifier sees z1 drawn from q(z1|x') instead, x' the image shifted."""
        images, labels = split_batch(inputs)
        z1 = self._draw_z1(images, _fold(seed, 1))  # (B, D1)
        seen = None
        if self.classifier_shift is not None and training:
            seen = self._codes(self._draw_z1(self.classifier_shift(images, training=True), _fold(seed, 3)))
        outputs = self.m2((self._codes(z1), labels), training=training, seed=_fold(seed, 2),
                          classifier_input=seen)
        return {**outputs, "z1": z1}

    def _draw_z1(self, images, seed):
        """z1 ~ q(z1|x) from the frozen M1: (B, H, W, C) -> (B, D1)."""
        return ops.stop_gradient(self.sampling(list(self.posterior(images)), seed=seed))

    def terms_of(self, batch, outputs) -> dict:
        """M2's `loss_terms` over z1 (its class docstring)."""
        return self.m2.terms_of(batch, outputs)

    # === Evaluation ===
    def _log_weights(self, images, z1_mean, z1_log_var, labels):
        """(count, seed) -> (count, B) log p(x|z1) + log p^(z1) - log q(z1|x) of fresh z1 draws."""
        def log_weights(count, chunk_seed):
            z1 = posterior_draws(z1_mean, z1_log_var, count, chunk_seed)  # (c, B, D1)
            flat = ops.reshape(z1, (-1, self.model_config.latent_dim))  # (c*B, D1)
            log_px = -ops.reshape(self.likelihood.nll(tile_draws(images, count), self.decode_params(flat)), (count, -1))
            tiled_labels = None if labels is None else tile_draws(labels, count)
            log_pz1 = self.m2.log_likelihood(self._codes(flat), num_samples=1, seed=_fold(chunk_seed, 1),
                                             labels=tiled_labels)
            return log_px + ops.reshape(log_pz1, (count, -1)) - losses.log_diag_normal(
                z1, z1_mean[None], z1_log_var[None])
        return log_weights

    def log_likelihood(self, images, num_samples: int = 1000, seed=0, chunk_size: int | None = None,
                       labels=None):
        """The nested IWAE estimate of log p(x) (of log p(x|y) given labels): -> (B,) nats."""
        images = ops.convert_to_tensor(images, "float32")
        z1_mean, z1_log_var = self.posterior(images)
        chunk_size = evaluation.chunk_size_for(images, num_samples, chunk_size)
        log_weights = self._log_weights(images, z1_mean, z1_log_var, labels)
        return evaluation.importance_log_mean_exp(log_weights, num_samples, seed, chunk_size)

    def negative_elbo(self, images, seed=0, labels=None):
        """The single-sample negative ELBO of the stack: -log p(x|z1) + log q(z1|x) + M2's
        negative ELBO of z1 (of -log p(z1|y) given labels, else of -log p(z1)). -> (B,)."""
        return sum(self._elbo_parts(images, seed, labels))

    def kl_term(self, images, seed=0, labels=None):
        """The KL part of `negative_elbo`: log q(z1|x) + M2's bound on -log p(z1)."""
        return self._elbo_parts(images, seed, labels)[1]

    def _elbo_parts(self, images, seed, labels):
        """(-log p(x|z1), log q(z1|x) + M2's negative ELBO of z1), one z1 draw: (B,) each."""
        images = ops.convert_to_tensor(images, "float32")
        z1_mean, z1_log_var = self.posterior(images)
        z1 = posterior_draws(z1_mean, z1_log_var, 1, evaluation.as_seed(seed))[0]
        reconstruction = self.likelihood.nll(images, self.decode_params(z1))
        log_q = losses.log_diag_normal(z1, z1_mean, z1_log_var)
        return reconstruction, log_q + self.m2.negative_elbo(self._codes(z1), _fold(seed, 1), labels=labels)

    def kl_per_unit(self, images, labels=None):
        """The KL of each of M2's units at M1's mean code: -> (B, D2) nats."""
        return self.m2.kl_per_unit(self._codes(self.posterior(images)[0]), labels=labels)

    def evaluation_terms(self, images, labels=None, num_samples: int = 1000, seed=0,
                         chunk_size: int | None = None) -> dict:
        """The VAE's terms of the stack given the labels (-log p(x|y)), the marginal
        `marginal_nelbo` and `marginal_iwae_nll` (-log p(x)) and the classifier's `accuracy`."""
        terms = super().evaluation_terms(images, labels, num_samples, seed, chunk_size)
        terms.update(marginal_nelbo=self.negative_elbo(images, seed),
                     marginal_iwae_nll=-self.log_likelihood(images, num_samples, seed, chunk_size))
        if labels is not None:
            predicted = tf.argmax(self.classify(images), axis=-1)
            terms["accuracy"] = tf.cast(tf.equal(predicted, tf.cast(labels, tf.int64)), tf.float32)
        return terms

    # === Public methods ===
    def classify(self, images):
        """q(y|z1) at M1's mean code: (B, H, W, C) -> (B, K)."""
        return self.m2.classify(self._codes(self.posterior(images)[0]))

    def encode(self, images, labels=None):
        """q(z2|z1, y) at M1's mean code z1 (y the classifier's class where a label is -1 or
        missing): (z2_mean, z2_log_var), (B, D2) each."""
        return self.m2.encode(self._codes(self.posterior(images)[0]), labels)

    def decode(self, z, condition=None):
        """Images of M2's codes z2 and one-hot labels: M2's mean z1, then M1's mean image."""
        z1 = self.m2.decode(z, condition)  # (B, 1, 1, D1)
        return super().decode(ops.reshape(z1, (-1, self.model_config.latent_dim)))

    def reconstruct(self, images, labels=None):
        """Decodes M2's mean code of each image with its label (or its predicted class)."""
        codes = self._codes(self.posterior(images)[0])
        _, condition = self.m2.inputs_of(codes, labels)
        return self.decode(self.m2.encode(codes, labels)[0], condition)

    def prior_draw(self, num_samples, seed, temperature=1.0, components=None):
        """M2's draws of z2 (N(0, T^2 I)): -> (N, D2)."""
        return self.m2.prior_draw(num_samples, seed, temperature, components)

    def decode_draw(self, draw):
        raise ValueError("an M1+M2 model generates from labels: use generate(labels)")

    def generate(self, labels, seed=None, temperature: float = 1.0):
        """One image per label, through both decoders: (B,) -> (B, H, W, C)."""
        labels = ops.convert_to_tensor(labels, "int64")
        z = self.prior_draw(tf.shape(labels)[0], seed_or_fresh(seed), temperature)
        return self.decode(z, self.condition.one_hot(labels))

    def sample(self, num_samples: int, seed=None, temperature: float = 1.0):
        """Images of classes 0, 1, ..., K-1, 0, ... (for a glance, TensorBoard)."""
        return self.generate(tf.range(num_samples) % self.num_classes, seed, temperature)
