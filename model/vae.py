"""The variational autoencoder: encoder -> (z_mean, z_log_var) -> Sampling -> decoder."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from model import losses
from model.config import ModelConfig
from model.layers import PACKAGE, BernoulliLikelihood, GaussianLikelihood, Sampling
from model.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder


def build_networks(config: ModelConfig):
    """Returns the (encoder, decoder) pair that `config.architecture` names."""
    if config.architecture == "mlp":
        return (
            MLPEncoder(config.latent_dim, config.hidden_units, config.activation, name="encoder"),
            MLPDecoder(config.image_shape, config.hidden_units, config.activation, name="decoder"),
        )
    conv = dict(
        conv_filters=config.conv_filters,
        hidden_units=config.hidden_units,
        kernel_size=config.kernel_size,
        activation=config.activation,
    )
    return (
        ConvEncoder(config.latent_dim, name="encoder", **conv),
        ConvDecoder(config.image_shape, name="decoder", **conv),
    )


def build_likelihood(config: ModelConfig):
    """Returns the decoder likelihood layer that `config.likelihood` names."""
    if config.likelihood == "bernoulli":
        return BernoulliLikelihood(name="likelihood", dtype="float32")
    return GaussianLikelihood(
        config.gaussian_log_scale, config.learn_gaussian_scale, name="likelihood", dtype="float32"
    )


def _images(data):
    """The images of a batch that may also carry labels: x, (x, y) or {"image": x}."""
    if isinstance(data, dict):
        return data["image"]
    if isinstance(data, (tuple, list)):
        return data[0]
    return data


@keras.saving.register_keras_serializable(package=PACKAGE)
class VAE(keras.Model):
    """A variational autoencoder trained on the negative ELBO.

    `call(images)` encodes, draws one z per image with the reparameterisation trick and
    decodes it. The KL term to N(0, I) (closed form, summed over latent units, mean over
    the batch) is added with `add_loss`; `compute_loss` adds the reconstruction term
    (-log p(x|z) summed over pixels, mean over the batch). While training the KL weight
    ramps from 0 to `beta` over `kl_warmup_steps` optimizer steps; in evaluation it is
    1, so `val_loss` is the true negative ELBO in nats per example. `fit` reports
    `loss`, `reconstruction` and `kl` (the unweighted KL).

    Args:
        model_config: a `ModelConfig` (or its dict).
        seed: seed of the sampling noise.

    Example:
        >>> vae = VAE(ModelConfig(latent_dim=2))
        >>> vae.compile(optimizer="adam")
        >>> vae.fit(dataset_of_images, epochs=1)
        >>> images = vae.sample(16, seed=0)  # (16, 28, 28, 1)
    """

    def __init__(self, model_config: ModelConfig | dict | None = None, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if model_config is None:
            model_config = ModelConfig()
        if isinstance(model_config, dict):
            model_config = ModelConfig.from_dict(model_config)
        self.model_config = model_config
        self.seed = seed
        # === Layers ===
        self.encoder, self.decoder = build_networks(model_config)
        self.sampling = Sampling(seed=seed, name="sampling", dtype="float32")
        self.likelihood = build_likelihood(model_config)
        # === Metrics ===
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    @property
    def latent_dim(self) -> int:
        return self.model_config.latent_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.model_config.image_shape

    def build(self, input_shape=None):
        # One eager pass on a dummy batch creates every weight with its final path.
        self.call(ops.zeros((1, *self.image_shape)))
        self.built = True

    def kl_weight(self, training=None):
        """The weight of the KL term: beta with warm-up while training, 1 otherwise."""
        if not training:
            return ops.convert_to_tensor(1.0, "float32")
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or self.model_config.kl_warmup_steps == 0:
            return ops.convert_to_tensor(self.model_config.beta, "float32")
        return losses.kl_weight(
            optimizer.iterations, self.model_config.beta, self.model_config.kl_warmup_steps
        )

    def call(self, images, training=None):
        # The networks may compute in float16/bfloat16 (mixed precision); encode and
        # decode_params hand float32 to the sampling, the KL and the likelihood.
        z_mean, z_log_var = self.encode(images)  # (B, D), (B, D)
        z = self.sampling([z_mean, z_log_var])  # (B, D)
        params = self.decode_params(z)  # (B, H, W, C)
        kl = losses.kl_divergence(z_mean, z_log_var)  # (B,)
        self.add_loss(ops.cast(self.kl_weight(training), kl.dtype) * ops.mean(kl))
        return {"params": params, "z_mean": z_mean, "z_log_var": z_log_var, "z": z, "kl": kl}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        images = _images(x)
        batch = ops.cast(ops.shape(images)[0], "float32")
        reconstruction = ops.mean(self.likelihood.nll(images, y_pred["params"]))
        total = reconstruction + ops.sum(self.losses)
        self.reconstruction_tracker.update_state(reconstruction, sample_weight=batch)
        self.kl_tracker.update_state(ops.mean(y_pred["kl"]), sample_weight=batch)
        # Gradients are summed over replicas: each replica's mean counts 1/replicas.
        return _scale_for_replicas(total)

    # === Public methods ===
    def encode(self, images):
        """q(z|x): returns (z_mean, z_log_var), each (B, latent_dim), in float32."""
        z_mean, z_log_var = self.encoder(ops.convert_to_tensor(images, "float32"))
        return ops.cast(z_mean, "float32"), ops.cast(z_log_var, "float32")

    def decode_params(self, z):
        """The likelihood's parameters for each z (logits or means), in float32."""
        return ops.cast(self.decoder(ops.convert_to_tensor(z, "float32")), "float32")

    def decode(self, z):
        """The decoder's mean image for each z: Bernoulli probabilities or Gaussian means."""
        return self.likelihood.mean(self.decode_params(z))

    def reconstruct(self, images):
        """Decodes the posterior mean of each image: (B, H, W, C) -> (B, H, W, C)."""
        z_mean, _ = self.encode(images)
        return self.decode(z_mean)

    def sample(self, num_samples: int, seed=None, temperature: float = 1.0):
        """Draws z ~ N(0, temperature^2 I) and decodes it: -> (num_samples, H, W, C)."""
        z = keras.random.normal((num_samples, self.latent_dim), seed=seed) * temperature
        return self.decode(z)

    # === Config ===
    def get_config(self):
        return {
            **super().get_config(),
            "model_config": self.model_config.to_dict(),
            "seed": self.seed,
        }


def _scale_for_replicas(value):
    """Divides a per-replica mean by the number of replicas in sync (1 outside tf.distribute)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value if replicas == 1 else value * (1.0 / replicas)
