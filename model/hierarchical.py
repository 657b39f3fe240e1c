"""Two stochastic layers: the HVAE of the VampPrior paper (Tomczak and Welling, 2018).

Generative model p(z2) p(z1|z2) p(x|z1, z2), inference q(z2|x) q(z1|x, z2): the top
layer z2 is inferred from x alone, the bottom layer z1 from x and z2, and generation runs
top-down. p(z2) is N(0, I) or the VampPrior (on the top layer only); p(z1|z2) and both
posteriors are diagonal Gaussians. Both layers have `latent_dim` units.

Shapes: B = batch, D = latent units per layer, n = draws per example.
"""

from __future__ import annotations


import keras
import tensorflow as tf
from keras import ops

from model import evaluation, losses
from model.draws import fold, posterior_draw, posterior_draws, reparameterise, tile_draws
from model.layers import PACKAGE
from model.networks import MLPEncoder
from model.priors import KL_UNIT_SEED
from model.vae import VAE, build_networks, split_batch


def gaussian_kl_per_unit(mean, log_var, prior_mean, prior_log_var):
    """KL(N(mean, var) || N(prior_mean, prior_var)) per unit, closed form: -> (B, D)."""
    return 0.5 * (prior_log_var - log_var
                  + (ops.exp(log_var) + ops.square(mean - prior_mean)) * ops.exp(-prior_log_var) - 1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class HierarchicalVAE(VAE):
    """A VAE with two stochastic layers, q(z2|x) q(z1|x, z2) and p(z2) p(z1|z2) p(x|z1, z2).

    The class of kind vae for `model_config.density.stochastic_layers == 2` (`model.kinds`). The
    objective keeps the VAE's split: `loss` is -log p(x|z1, z2) and the KL term,
    KL(q(z1|x, z2) || p(z1|z2)) (closed form given the drawn z2) plus the top layer's KL
    (closed form to N(0, I), Monte Carlo for the VampPrior), goes through `add_loss`.
    With `train_samples` k > 1 the IWAE bound over both layers is all in `loss` (see
    `VAE`). The top layer is the served code: `encode` returns q(z2|x),
    `decode(z2)` decodes with z1 at the mean of p(z1|z2), and generation draws z2 from
    the prior, then z1 ~ p(z1|z2) (noise scaled by the temperature), then decodes.

    Args:
        model_config: a `ModelConfig` (or its dict) with `density.stochastic_layers=2`.
        seed: seed of the sampling noise.

    Example:
        >>> hvae = build_model(ModelConfig(density=DensityConfig(stochastic_layers=2)))  # a HierarchicalVAE
        >>> z2_mean, z2_log_var = hvae.encode(images)  # the top layer, (B, D) each
        >>> images = hvae.sample(16, seed=0)  # top-down
    """

    STOCHASTIC_LAYERS = 2
    kl_sums_units = False  # the units of z1 are KLs at one draw of z2 (see `kl_per_unit`)

    def make_networks(self, condition_dim: int):
        config, dim = self.model_config, self.latent_dim
        encoder, _ = build_networks(config, self.x_shape)  # q(z2|x)
        encoder_z1, decoder = build_networks(config, self.x_shape, condition_dim=dim)
        encoder_z1.name = "encoder_z1"  # q(z1|x, z2): x with z2 as its condition
        # === Layers ===
        self.encoder_z1 = encoder_z1
        self.prior_z1 = MLPEncoder(dim, config.hidden_units, config.activation, block=config.block,
                                   name="prior_z1")  # p(z1|z2)
        return encoder, decoder  # decoder: p(x|z1, z2), z2 its condition

    @property
    def latent_layers(self) -> tuple[tuple[str, int], ...]:
        return (("z1", self.latent_dim), ("z2", self.latent_dim))

    # === The layers' distributions (float32) ===
    def posterior_z1(self, x, z2):
        """q(z1|x, z2): (mean, log_var), (B, D) each."""
        mean, log_var = self.encoder_z1(ops.convert_to_tensor(x, "float32"), z2)
        return ops.cast(mean, "float32"), ops.cast(log_var, "float32")

    def prior_z1_params(self, z2):
        """p(z1|z2): (mean, log_var), (B, D) each."""
        mean, log_var = self.prior_z1(ops.convert_to_tensor(z2, "float32"))
        return ops.cast(mean, "float32"), ops.cast(log_var, "float32")

    def joint_decode_params(self, z1, z2):
        """The likelihood's parameters of p(x|z1, z2), float32."""
        return ops.cast(self.decoder(ops.convert_to_tensor(z1, "float32"), z2), "float32")

    # === The objective ===
    def call(self, inputs, training=None, seed=None):
        """Draws z2 ~ q(z2|x), z1 ~ q(z1|x, z2), decodes; adds the weighted KL of both layers."""
        x, _ = self.inputs_of(*split_batch(inputs))
        z2_mean, z2_log_var = self.posterior(x)  # (B, D)
        seed_z1 = None if seed is None else fold(seed, 1)
        k = int(self.train_samples)
        if k > 1:
            z2 = self.sampling([ops.broadcast_to(z2_mean[None], (k, *ops.shape(z2_mean))),
                                ops.broadcast_to(z2_log_var[None], (k, *ops.shape(z2_mean)))], seed=seed)
            log_px_z, log_ratio = self.log_weights(
                x, z2_mean, z2_log_var, z2, lambda m, v: self.sampling([m, v], seed=seed_z1))
            self.add_loss(ops.zeros((), "float32"))  # the bound is all in `loss`
            return {"z_mean": z2_mean, "z_log_var": z2_log_var, "z": z2, "x": x, "kl": -ops.mean(log_ratio, 0),
                    "log_px_z": log_px_z, "log_ratio": log_ratio,
                    "kl_weight": ops.cast(self.kl_weight(training), "float32")}
        z2 = self.sampling([z2_mean, z2_log_var], seed=seed)  # (B, D)
        z1_mean, z1_log_var = self.posterior_z1(x, z2)
        z1 = self.sampling([z1_mean, z1_log_var], seed=seed_z1)  # (B, D)
        params = self.joint_decode_params(z1, z2)  # (B, H, W, C)
        kl = self._layer_kls(z2, z2_mean, z2_log_var, z1_mean, z1_log_var)  # (B,)
        self.add_loss(ops.cast(self.kl_weight(training), kl.dtype) * ops.mean(kl))
        return {"params": params, "z_mean": z2_mean, "z_log_var": z2_log_var, "z": z2, "z1": z1, "kl": kl, "x": x}

    def _layer_kls(self, z2, z2_mean, z2_log_var, z1_mean, z1_log_var):
        """KL(q(z1|x, z2) || p(z1|z2)) in closed form plus the top layer's KL term: -> (B,)."""
        prior_mean, prior_log_var = self.prior_z1_params(z2)
        kl_z1 = ops.sum(gaussian_kl_per_unit(z1_mean, z1_log_var, prior_mean, prior_log_var), axis=-1)
        return kl_z1 + self.prior.kl(z2, z2_mean, z2_log_var)

    def log_weights(self, x, z2_mean, z2_log_var, z2, draw_z1, log_prior=None):
        """log p(x|z1, z2) and log p(z1, z2) - log q(z1, z2|x) of n draws per example.

        Args:
            x: (B, H, W, C); z2_mean, z2_log_var: q(z2|x), (B, D) each.
            z2: the draws of the top layer, (n, B, D), n a Python int.
            draw_z1: (mean, log_var) of q(z1|x, z2), (n*B, D) each -> a draw z1.
            log_prior: log p(z2) (default: the model's prior).

        Returns:
            (log_px_z, log_ratio), (n, B) each.
        """
        n, dim = z2.shape[0], self.latent_dim
        log_prior = log_prior or self.prior.log_density()
        flat_z2 = ops.reshape(z2, (-1, dim))  # (n*B, D)
        tiled_x = tile_draws(x, n)  # (n*B, H, W, C)
        z1_mean, z1_log_var = self.posterior_z1(tiled_x, flat_z2)
        z1 = draw_z1(z1_mean, z1_log_var)  # (n*B, D)
        prior_mean, prior_log_var = self.prior_z1_params(flat_z2)
        log_px_z = -ops.reshape(self.likelihood.nll(tiled_x, self.joint_decode_params(z1, flat_z2)), (n, -1))
        ratio_z1 = losses.log_diag_normal(z1, prior_mean, prior_log_var) - losses.log_diag_normal(
            z1, z1_mean, z1_log_var)
        ratio_z2 = log_prior(z2) - losses.log_diag_normal(z2, z2_mean[None], z2_log_var[None])
        return log_px_z, ops.reshape(ratio_z1, (n, -1)) + ratio_z2

    # === Evaluation ===
    def _elbo_parts(self, images, seed):
        """(-log p(x|z1, z2), the KL term) of one stateless draw per image: (B,) each."""
        x = ops.convert_to_tensor(images, "float32")
        z2_mean, z2_log_var = self.posterior(x)
        z2 = posterior_draw(z2_mean, z2_log_var, fold(seed, 0))
        z1_mean, z1_log_var = self.posterior_z1(x, z2)
        z1 = posterior_draw(z1_mean, z1_log_var, fold(seed, 1))
        reconstruction = self.likelihood.nll(x, self.joint_decode_params(z1, z2))
        return reconstruction, self._layer_kls(z2, z2_mean, z2_log_var, z1_mean, z1_log_var)

    def negative_elbo(self, images, seed=0, labels=None):
        """The single-sample negative ELBO over both layers (KL weight 1): -> (B,) nats."""
        reconstruction, kl = self._elbo_parts(images, seed)
        return reconstruction + kl

    def kl_term(self, images, seed=0, labels=None):
        return self._elbo_parts(images, seed)[1]

    def log_likelihood(self, images, num_samples: int = 1000, seed=0, chunk_size: int | None = None,
                       labels=None):
        """The k-sample IWAE estimate of log p(x) over both layers, in chunks: -> (B,) nats.

        z2_i ~ q(z2|x), z1_i ~ q(z1|x, z2_i); log (1/k) sum_i p(x, z1_i, z2_i) / q(z1_i, z2_i|x).
        """
        x = ops.convert_to_tensor(images, "float32")
        z2_mean, z2_log_var = self.posterior(x)
        log_prior = self.prior.log_density()
        chunk_size = evaluation.chunk_size_for(x, num_samples, chunk_size)

        def log_weights(count, chunk_seed):
            z2 = posterior_draws(z2_mean, z2_log_var, count, fold(chunk_seed, 0))  # (c, B, D)

            def draw_z1(mean, log_var):
                return posterior_draw(mean, log_var, fold(chunk_seed, 1))

            log_px_z, log_ratio = self.log_weights(x, z2_mean, z2_log_var, z2, draw_z1, log_prior)
            return log_px_z + log_ratio  # (c, B)

        return evaluation.importance_log_mean_exp(log_weights, num_samples, seed, chunk_size)

    def kl_per_unit(self, images, labels=None):
        """Each unit's KL, z1's units then z2's: -> (B, 2D). z1: KL(q(z1_d|x, z2) ||
        p(z1_d|z2)) at one fixed draw of z2; z2: as a one-layer model's (`evaluation.kl_per_unit`)."""
        x = ops.convert_to_tensor(images, "float32")
        z2_mean, z2_log_var = self.posterior(x)
        z2 = posterior_draw(z2_mean, z2_log_var, KL_UNIT_SEED)
        z1_mean, z1_log_var = self.posterior_z1(x, z2)
        kl_z1 = gaussian_kl_per_unit(z1_mean, z1_log_var, *self.prior_z1_params(z2))
        return ops.concatenate([kl_z1, evaluation.kl_per_unit(self, x)], axis=-1)

    # === Public methods ===
    def decode_params(self, z, condition=None):
        """The likelihood's parameters for top codes z2, z1 at the mean of p(z1|z2)."""
        z2 = ops.convert_to_tensor(z, "float32")
        return self.joint_decode_params(self.prior_z1_params(z2)[0], z2)

    def reconstruct(self, images, labels=None):
        """Decodes each image's posterior means, z2 = E q(z2|x), z1 = E q(z1|x, z2)."""
        x = ops.convert_to_tensor(images, "float32")
        z2, _ = self.posterior(x)
        z1, _ = self.posterior_z1(x, z2)
        return self.likelihood.mean(self.joint_decode_params(z1, z2))

    @property
    def draw_dim(self) -> int:
        return 2 * self.latent_dim

    def prior_draw(self, num_samples, seed, temperature=1.0, components=None):
        """[z2 from the prior (as a one-layer model's), temperature * eps for z1]: -> (N, 2D)."""
        z2 = super().prior_draw(num_samples, seed, temperature, components)
        eps = tf.random.stateless_normal(tf.stack([num_samples, self.latent_dim]), fold(seed, 2))
        return ops.concatenate([z2, eps * temperature], axis=-1)

    def decode_draw(self, draw):
        """Top-down: z1 = mean + sigma * noise under p(z1|z2), then p(x|z1, z2)'s mean. -> (images, z2)."""
        z2, noise = draw[:, : self.latent_dim], draw[:, self.latent_dim :]
        mean, log_var = self.prior_z1_params(z2)
        z1 = reparameterise(mean, log_var, noise)
        return self.likelihood.mean(self.joint_decode_params(z1, z2)), z2
