"""The variational autoencoder: encoder -> (z_mean, z_log_var) -> Sampling -> decoder."""

from __future__ import annotations

import math

import keras
from keras import ops

from model import evaluation, kinds, losses, priors
from model.config import ConfigError, ModelConfig
from model.draws import seed_or_fresh, tile_draws
from model.layers import PACKAGE, BernoulliLikelihood, GaussianLikelihood, Sampling
from model.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder


def build_networks(config: ModelConfig, x_shape=None, condition_dim: int = 0):
    """Returns the (encoder, decoder) pair that `config.architecture` names.

    Args:
        config: the model config.
        x_shape: (H, W, C) of the model's x (default: `config.image_shape`).
        condition_dim: size of a conditional model's condition vector (0: unconditional).
    """
    x_shape = tuple(x_shape or config.image_shape)
    if config.architecture == "mlp":
        return (
            MLPEncoder(config.latent_dim, config.hidden_units, config.activation,
                       condition_dim=condition_dim, block=config.block, name="encoder"),
            MLPDecoder(x_shape, config.hidden_units, config.activation,
                       condition_dim=condition_dim, block=config.block, name="decoder"),
        )
    conv = dict(
        conv_filters=config.conv_filters,
        hidden_units=config.hidden_units,
        kernel_size=config.kernel_size,
        activation=config.activation,
        condition_dim=condition_dim,
    )
    return (
        ConvEncoder(config.latent_dim, name="encoder", **conv),
        ConvDecoder(x_shape, name="decoder", **conv),
    )


def build_likelihood(config: ModelConfig):
    """Returns the decoder likelihood layer that `config.likelihood` names."""
    if config.likelihood == "bernoulli":
        return BernoulliLikelihood(name="likelihood", dtype="float32")
    return GaussianLikelihood(
        config.gaussian_log_scale, config.learn_gaussian_scale, name="likelihood", dtype="float32"
    )


def split_batch(batch):
    """(images, labels or None) of a batch: x, (x, y) or {"image": x, "label": y}."""
    if isinstance(batch, dict):
        return batch["image"], batch.get("label")
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def importance_terms(log_px_z, log_ratio, weight, kl) -> dict:
    """`loss_terms` of the k-sample objective from (k, B) log p(x|z_i) and log p(z_i) -
    log q(z_i|x): loss = -log (1/k) sum_i exp(log p(x|z_i) + weight * log_ratio_i)."""
    k = log_px_z.shape[0]
    log_w = log_px_z + weight * log_ratio  # (k, B)
    loss = -(ops.logsumexp(log_w, axis=0) - math.log(k))
    return {"loss": loss, "reconstruction": -ops.mean(log_px_z, axis=0), "kl": kl}


@keras.saving.register_keras_serializable(package=PACKAGE)
class VAE(keras.Model):
    """A variational autoencoder trained on the negative ELBO.

    `call(images)` encodes, draws one z per image with the reparameterisation trick and
    decodes it. The KL term to N(0, I) (closed form, summed over latent units, mean over
    the batch, weighted by `kl_weight`) is added with `add_loss`. The model owns its
    objective: `loss_terms(batch)` returns the per-example terms, and

        objective = mean over the batch of terms["loss"] + sum(self.losses)

    which `keras.fit` (through `compute_loss`) and the project's distributed trainer
    both minimise. Subclasses plug a condition in (`make_condition`): the conditional
    VAE and M2 reuse this forward pass and evaluation with x and c in place of images.
    While training the KL weight ramps from 0 to beta (`model_config.kl_beta`) over
    `kl_warmup_steps` optimizer steps; in evaluation it is 1, so `val_loss` is the true
    negative ELBO in nats per example. `fit` reports `loss`, `reconstruction` and `kl`
    (the unweighted KL).

    Importance-weighted training (`train_samples` k > 1, read from the plain attribute
    `self.train_samples` when a step is traced; a trainer changes it with `set_schedule`):
    k draws z_i ~ q(z|x) per example, and the whole bound lives in `loss`,
    -log (1/k) sum_i exp(log p(x|z_i) + w (log p(z_i) - log q(z_i|x))) with w the KL
    weight (1 in evaluation: the IWAE bound); `add_loss`
    then carries 0, so `mean(loss) + sum(self.losses)` is still the objective. The
    reported `reconstruction` is -log p(x|z_i) averaged over the k draws and `kl` the
    KL as with k = 1 (their sum is the k-draw ELBO, above `loss`). k = 1 is the ELBO
    path unchanged.

    The prior (`self.prior`, a `model.priors.Prior` built from `model_config.prior_name`):
    N(0, I) with the KL in closed form, or the VampPrior, p(z) = (1/K) sum_k q(z|u_k) at K
    learned pseudo-inputs u_k, with the KL by Monte Carlo, log q(z|x) - log p(z) at the
    drawn z. A config with `density.stochastic_layers=2` is the two-layer
    `model.hierarchical.HierarchicalVAE`: build a model from a config with
    `model.build_model`, which picks the class.

    What the model serves, beyond encode/decode/reconstruct/log-likelihood, is what its
    kind declares (`model/kinds.py`), answered by `takes_labels`, `classifies` and
    `completes` (the exporter and the pictures read them).

    Args:
        model_config: a `ModelConfig` (or its dict).
        seed: seed of the sampling noise.

    Example:
        >>> vae = VAE(ModelConfig(latent_dim=2))
        >>> vae.compile(optimizer="adam")
        >>> vae.fit(dataset_of_images, epochs=1)
        >>> images = vae.sample(16, seed=0)  # (16, 28, 28, 1)
    """

    # The keys of `loss_terms`, in the order a trainer logs them.
    LOSS_TERMS = ("loss", "reconstruction", "kl")
    # `model_config.density.stochastic_layers` of the configs this class builds.
    STOCHASTIC_LAYERS = 1
    # Keras' `compile` sets it; None before (and after a load that did not compile).
    optimizer = None

    def __init__(self, model_config: ModelConfig | dict | None = None, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if model_config is None:
            model_config = ModelConfig()
        if isinstance(model_config, dict):
            model_config = ModelConfig.from_dict(model_config)
        if model_config.density.stochastic_layers != self.STOCHASTIC_LAYERS:
            raise ConfigError(
                f"ModelConfig.density.stochastic_layers={model_config.density.stochastic_layers} is not built by "
                f"{type(self).__name__}; build the model with model.build_model(config)")
        self.model_config = model_config
        self.seed = seed
        self.condition = self.make_condition()
        # === Layers ===
        condition_dim = self.condition.dim if self.condition is not None else 0
        self.encoder, self.decoder = self.make_networks(condition_dim)
        self.sampling = Sampling(seed=seed, name="sampling", dtype="float32")
        self.likelihood = build_likelihood(model_config)
        self.prior = priors.make_prior(model_config, self.x_shape, self.posterior)
        for name, layer in self.prior.layers.items():  # the prior's weights are the model's
            setattr(self, name, layer)
        # === The training schedule (`set_schedule`) ===
        # k of the training objective, read when a step is traced.
        self.train_samples = int(model_config.density.train_samples)
        # The KL warm-up by the run's progress: a callable -> its value in [0, 1], or None
        # (then the warm-up is by optimizer steps, `model_config.kl_warmup_steps`).
        self.kl_warmup_ramp = None
        # === Metrics ===
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    # === What the model serves (read by the exporter and the pictures): as its kind declares ===
    @property
    def takes_labels(self) -> bool:
        """Generation, encoding, ... take class labels."""
        return self._serves[0]

    @property
    def classifies(self) -> bool:
        """q(y|x): `classify(images)`."""
        return self._serves[1]

    @property
    def completes(self) -> bool:
        """`complete(images)`: an observed half kept, the other drawn."""
        return self._serves[2]

    @property
    def _serves(self) -> tuple[bool, bool, bool]:
        return kinds.lookup(self.model_config.kind).serves(self.model_config.condition)

    @property
    def latent_dim(self) -> int:
        return self.model_config.latent_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images the model takes (whole images, for a half condition too)."""
        return self.model_config.image_shape

    @property
    def num_classes(self) -> int | None:
        """K, the classes of a model that takes labels; None otherwise."""
        return None

    @property
    def x_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of what the decoder models: the images, or the unobserved half."""
        return self.condition.x_shape if self.condition is not None else self.image_shape

    def make_condition(self):
        """What the model is conditioned on (`model.conditions`); None: unconditional."""
        return None

    def make_networks(self, condition_dim: int):
        """(encoder, decoder): q(z|x[, c]) and p(x|z[, c]) (`build_networks`)."""
        return build_networks(self.model_config, self.x_shape, condition_dim)

    def set_output_bias(self, value) -> None:
        """Sets the decoder's output bias (`train.init_output_bias`): a scalar or an array
        over `x_shape`, the logit (or mean) of each pixel."""
        self.decoder.set_output_bias(value)

    def inputs_of(self, images, labels=None):
        """(x, c): what the networks see of a batch; c is None for an unconditional model."""
        images = ops.convert_to_tensor(images, "float32")
        if self.condition is None:
            return images, None
        return self.condition.split(images, labels)

    def build(self, input_shape=None):
        # One eager pass on a dummy batch creates every weight with its final path.
        self.call((ops.zeros((1, *self.image_shape)), ops.zeros((1,), "int64")))
        self.built = True

    def set_schedule(self, *, train_samples: int | None = None, kl_warmup_ramp=None) -> None:
        """What a trainer hands the model as the run progresses (pipelines/train/trainer.py).

        Args:
            train_samples: k of the training objective from now on (1: the ELBO); read
                when a step is traced, so the trainer retraces its step after a change.
                None leaves it.
            kl_warmup_ramp: a callable returning the KL warm-up's value in [0, 1] (e.g. a
                variable's `read_value`), read at every step: the KL weight is then beta
                times it (`train.kl_warmup_fraction`), in place of the warm-up by
                optimizer steps. None leaves it.
        """
        if train_samples is not None:
            self.train_samples = int(train_samples)
        if kl_warmup_ramp is not None:
            self.kl_warmup_ramp = kl_warmup_ramp

    def kl_weight(self, training=None):
        """The weight of the KL term: beta with warm-up while training, 1 otherwise."""
        if not training:
            return ops.convert_to_tensor(1.0, "float32")
        if self.kl_warmup_ramp is not None:  # a trainer's warm-up by the run's progress
            return ops.cast(self.kl_warmup_ramp(), "float32") * self.model_config.kl_beta
        if not self.compiled or self.model_config.kl_warmup_steps == 0:  # (no optimizer yet)
            return ops.convert_to_tensor(self.model_config.kl_beta, "float32")
        return losses.kl_weight(
            self.optimizer.iterations, self.model_config.kl_beta, self.model_config.kl_warmup_steps
        )

    def call(self, inputs, training=None, seed=None):
        """Encodes, samples and decodes; adds the weighted KL with `add_loss`.

        Args:
            inputs: images (B, H, W, C), or a batch that carries labels too.
            seed: an int64[2] seed for a stateless posterior draw (reproducible
                evaluation); None draws from the sampling layer's seed generator.
        """
        x, c = self.inputs_of(*split_batch(inputs))  # (B, H, W, C), (B, C) or None
        # The networks may compute in float16/bfloat16 (mixed precision); posterior and
        # decode_params hand float32 to the sampling, the KL and the likelihood.
        z_mean, z_log_var = self.posterior(x, c)  # (B, D), (B, D)
        if int(self.train_samples) > 1:
            return self._importance_call(x, c, z_mean, z_log_var, int(self.train_samples), training, seed)
        z = self.sampling([z_mean, z_log_var], seed=seed)  # (B, D)
        params = self.decode_params(z, c)  # (B, H, W, C) of x
        kl = self.prior.kl(z, z_mean, z_log_var)  # (B,)
        self.add_loss(ops.cast(self.kl_weight(training), kl.dtype) * ops.mean(kl))
        return {"params": params, "z_mean": z_mean, "z_log_var": z_log_var, "z": z, "kl": kl, "x": x}

    def _importance_call(self, x, c, z_mean, z_log_var, k: int, training, seed):
        """The forward pass of the k-sample objective: k draws per example, decoded at once."""
        batch = ops.shape(z_mean)[0]
        z = self.sampling([ops.broadcast_to(z_mean[None], (k, batch, self.latent_dim)),
                           ops.broadcast_to(z_log_var[None], (k, batch, self.latent_dim))], seed=seed)  # (k, B, D)
        tiled_c = None if c is None else tile_draws(c, k)  # (k*B, C)
        params = self.decode_params(ops.reshape(z, (-1, self.latent_dim)), tiled_c)  # (k*B, H, W, C)
        log_px_z = -ops.reshape(self.likelihood.nll(tile_draws(x, k), params), (k, -1))  # (k, B)
        log_ratio = self.prior.log_density()(z) - losses.log_diag_normal(z, z_mean[None], z_log_var[None])
        kl = self.prior.reported_kl(z_mean, z_log_var, log_ratio)  # (B,)
        self.add_loss(ops.zeros((), "float32"))  # the bound is all in `loss`
        weight = ops.cast(self.kl_weight(training), "float32")
        return {"z_mean": z_mean, "z_log_var": z_log_var, "z": z, "kl": kl, "x": x,
                "log_px_z": log_px_z, "log_ratio": log_ratio, "kl_weight": weight}

    # === The objective ===
    def loss_terms(self, batch, training=False, seed=None) -> dict:
        """The per-example terms of the objective for a batch that may carry labels.

        Runs the forward pass (which adds the weighted KL to `self.losses`) and returns
        `LOSS_TERMS`, each (B,) float32: `loss`, the per-example part of the objective
        (here -log p(x|z), summed over pixels; with `train_samples` k > 1 the negative
        IWAE bound), and what the model reports,
        `reconstruction` and the unweighted `kl`. The whole objective is
        `mean(loss) + sum(self.losses)`.

        Args:
            batch: images, (images, labels) or {"image": ..., "label": ...}.
            training: training mode (the KL weight ramps; 1 otherwise).
            seed: an int64[2] seed for a stateless posterior draw, or None.
        """
        return self.terms_of(batch, self(batch, training=training, seed=seed))

    def terms_of(self, batch, outputs) -> dict:
        """`loss_terms` from the outputs of a forward pass already run on `batch`."""
        if "log_px_z" in outputs:  # k > 1: the importance-weighted bound
            return importance_terms(outputs["log_px_z"], outputs["log_ratio"], outputs["kl_weight"],
                                    outputs["kl"])
        reconstruction = self.likelihood.nll(outputs["x"], outputs["params"])  # (B,)
        return {"loss": reconstruction, "reconstruction": reconstruction, "kl": outputs["kl"]}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The objective under `keras.fit`; Keras divides each part by the replicas in sync."""
        terms = self.terms_of(x, y_pred)
        batch = ops.cast(ops.shape(terms["loss"])[0], "float32")
        self.reconstruction_tracker.update_state(ops.mean(terms["reconstruction"]), sample_weight=batch)
        self.kl_tracker.update_state(ops.mean(terms["kl"]), sample_weight=batch)
        total = self._aggregate_additional_loss(ops.mean(terms["loss"]))
        for value in self.losses:
            total = total + self._aggregate_additional_loss(value)
        return total

    # === Evaluation ===
    def negative_elbo(self, images, seed=0, labels=None):
        """The single-sample negative ELBO of each image (KL weight 1): -> (B,) nats.

        A conditional model bounds -log p(x|y) (labels, or the observed half)."""
        x, c = self.inputs_of(images, labels)
        return evaluation.negative_elbo(self, x, seed, c)

    def log_likelihood(self, images, num_samples: int = 1000, seed=0, chunk_size: int | None = None,
                       labels=None):
        """The k-sample IWAE estimate of log p(x) of each image: -> (B,) nats.

        A conditional model estimates log p(x|y) (labels, or the observed half)."""
        x, c = self.inputs_of(images, labels)
        return evaluation.iwae_log_likelihood(self, x, num_samples, seed, chunk_size, c)

    def kl_per_unit(self, images, labels=None):
        """The KL of each latent unit to the prior for each image: -> (B, D) nats."""
        x, c = self.inputs_of(images, labels)
        return evaluation.kl_per_unit(self, x, c)

    def kl_term(self, images, seed=0, labels=None):
        """The KL part of `negative_elbo` (same seed, same draw): -> (B,) nats."""
        x, c = self.inputs_of(images, labels)
        return evaluation.elbo_kl(self, x, seed, c)

    def evaluation_terms(self, images, labels=None, num_samples: int = 1000, seed=0,
                         chunk_size: int | None = None) -> dict:
        """Per-example test metrics of a batch, which `pipelines.evaluate` averages.

        Returns:
            `nelbo` and `iwae_nll` (B,) nats, and `kl_per_unit` (B, units;
            `latent_layers` says which units belong to which layer); where the units'
            KLs do not sum to the ELBO's KL (VampPrior, two layers), `kl` (B,), the KL
            part of `nelbo`. Subclasses add their own (M2: the marginal -log p(x) and
            the classifier's accuracy).
        """
        terms = {
            "nelbo": self.negative_elbo(images, seed, labels=labels),
            "iwae_nll": -self.log_likelihood(images, num_samples, seed, chunk_size, labels=labels),
            "kl_per_unit": self.kl_per_unit(images, labels=labels),
        }
        if not self.kl_sums_units:
            terms["kl"] = self.kl_term(images, seed, labels=labels)
        return terms

    @property
    def latent_layers(self) -> tuple[tuple[str, int], ...]:
        """(name, units) of each stochastic layer, in the order of `kl_per_unit`'s units."""
        return (("z", self.latent_dim),)

    # === The prior ===
    @property
    def kl_sums_units(self) -> bool:
        """Whether the ELBO's KL term is the sum of `kl_per_unit`'s units (the prior's say)."""
        return self.prior.kl_sums_units

    @property
    def draw_dim(self) -> int:
        """Width of `prior_draw`'s rows."""
        return self.latent_dim

    def prior_draw(self, num_samples, seed, temperature=1.0, components=None):
        """The draws behind `generate`, stateless from an int64[2] seed: -> (N, draw_dim).

        The prior's draw (`Prior.draw`): N(0, I): z = temperature * eps; VampPrior: a
        pseudo-input u_k picked uniformly, then z = mu(u_k) + temperature * sigma(u_k) * eps.
        `components`: what `prior.components()` returned, computed once (e.g. frozen into
        an export), instead of encoding the picked pseudo-inputs per call.
        """
        return self.prior.draw(num_samples, seed, temperature, components)

    def decode_draw(self, draw):
        """`prior_draw` rows -> (decoder mean images (N, H, W, C), the codes z (N, D))."""
        return self.decode(draw), draw

    # === Public methods ===
    def posterior(self, x, condition=None):
        """q(z|x) (q(z|x, y) given a condition vector): (z_mean, z_log_var), (B, D) float32."""
        x = ops.convert_to_tensor(x, "float32")
        z_mean, z_log_var = self.encoder(x) if condition is None else self.encoder(x, condition)
        return ops.cast(z_mean, "float32"), ops.cast(z_log_var, "float32")

    def encode(self, images, labels=None):
        """q(z|x) of whole images (q(z|x, y) for a conditional model): (z_mean, z_log_var)."""
        return self.posterior(*self.inputs_of(images, labels))

    def decode_params(self, z, condition=None):
        """The likelihood's parameters of x for each z (and condition vector), float32."""
        z = ops.convert_to_tensor(z, "float32")
        params = self.decoder(z) if condition is None else self.decoder(z, condition)
        return ops.cast(params, "float32")

    def decode(self, z, condition=None):
        """The decoder's mean of x for each z: Bernoulli probabilities or Gaussian means."""
        return self.likelihood.mean(self.decode_params(z, condition))

    def reconstruct(self, images, labels=None):
        """Decodes the posterior mean of each image: (B, H, W, C) -> (B, H, W, C).

        For a half condition the observed half is kept and the other half decoded."""
        images = ops.convert_to_tensor(images, "float32")
        x, c = self.inputs_of(images, labels)
        z_mean, _ = self.posterior(x, c)
        x_mean = self.decode(z_mean, c)
        return x_mean if self.condition is None else self.condition.assemble(images, x_mean)

    def sample(self, num_samples: int, seed=None, temperature: float = 1.0):
        """Draws from the prior (`prior_draw`, temperature T; a fresh seed when `seed` is
        None) and decodes: -> (num_samples, H, W, C)."""
        return self.decode_draw(self.prior_draw(num_samples, seed_or_fresh(seed), temperature))[0]

    # === Config ===
    def get_config(self):
        return {
            **super().get_config(),
            "model_config": self.model_config.to_dict(),
            "seed": self.seed,
        }
