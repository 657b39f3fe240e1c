"""Priors over the latent code, N(0, I) and the VampPrior (Tomczak and Welling, 2018),
behind one interface (`Prior`), built from `ModelConfig.prior_name` by `make_prior`.

The VampPrior is the mixture of the encoder's own posteriors at K learned pseudo-inputs
u_k, p(z) = (1/K) sum_k q(z|u_k). The pseudo-inputs live in image space: a learned
tensor passed through a hard tanh onto [0, 1], as in the reference implementation.
The model owns the encoder, so the prior layer holds only the pseudo-inputs; the
mixture's components are `model.posterior(pseudo_inputs)`, recomputed at every step
(an export freezes them: `Prior.components`).

Shapes: N = any number of codes, K = components, D = latent dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import keras
import tensorflow as tf
from keras import ops

from model import losses
from model.config import ModelConfig
from model.draws import as_seed, fold, posterior_draw, reparameterise
from model.layers import PACKAGE

# The fixed draw of a Monte Carlo KL per unit (VampPrior, two layers): reproducible reports.
KL_UNIT_SEED = (0, 0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PseudoInputs(keras.layers.Layer):
    """The VampPrior's K learned pseudo-inputs in image space, each pixel in [0, 1].

    The stored weight is unconstrained; `call()` returns it clipped to [0, 1] (a hard
    tanh, whose gradient is 1 inside the interval). Initialised N(0.05, 0.01) per pixel,
    as in the reference code.

    Args:
        count: K, the number of pseudo-inputs.
        image_shape: (H, W, C) of one pseudo-input (the model's x).

    Example:
        >>> u = PseudoInputs(500, (28, 28, 1))()  # (500, 28, 28, 1)
    """

    INIT_MEAN = 0.05
    INIT_STDDEV = 0.01

    def __init__(self, count: int, image_shape, **kwargs):
        super().__init__(**kwargs)
        self.count = int(count)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.values = self.add_weight(
            shape=(self.count, *self.image_shape),
            initializer=keras.initializers.RandomNormal(self.INIT_MEAN, self.INIT_STDDEV),
            name="pseudo_inputs",
        )

    def call(self, indices=None):
        """All K pseudo-inputs (K, H, W, C), or those at `indices` (N,) -> (N, H, W, C)."""
        values = ops.cast(self.values, "float32")
        if indices is not None:
            values = ops.take(values, indices, axis=0)
        return ops.clip(values, 0.0, 1.0)

    def get_config(self):
        return {**super().get_config(), "count": self.count, "image_shape": list(self.image_shape)}


def log_mixture_density(z, means, log_vars):
    """log (1/K) sum_k N(z | means_k, diag(exp(log_vars_k))): (..., D), (K, D) -> (...).

    The quadratic form is expanded into matrix products, so the memory is N x K rather
    than N x K x D (K = 500 components, D = 40 units and thousands of IWAE draws).
    """
    z = tf.convert_to_tensor(z, tf.float32)
    batch_shape = tf.shape(z)[:-1]
    flat = tf.reshape(z, (-1, z.shape[-1]))  # (N, D)
    precision = tf.exp(-log_vars)  # (K, D)
    quadratic = (
        tf.matmul(tf.square(flat), precision, transpose_b=True)  # (N, K)
        - 2.0 * tf.matmul(flat, means * precision, transpose_b=True)
        + tf.reduce_sum(tf.square(means) * precision, axis=-1)[None]
    )
    constant = tf.reduce_sum(log_vars, axis=-1) + z.shape[-1] * losses.LOG_2PI  # (K,)
    log_components = -0.5 * (tf.maximum(quadratic, 0.0) + constant[None])  # (N, K)
    log_p = tf.reduce_logsumexp(log_components, axis=-1) - math.log(means.shape[0])
    return tf.reshape(log_p, batch_shape)


def log_marginal_mixture_density(z, means, log_vars):
    """Each unit's own marginal of the mixture, log (1/K) sum_k N(z_d | mu_kd, var_kd):
    (B, D), (K, D) -> (B, D). (The mixture does not factorise over units; its marginals do
    give each unit's KL for counting active units.)"""
    z = tf.convert_to_tensor(z, tf.float32)
    log_components = -0.5 * (
        tf.square(z[:, None, :] - means[None]) * tf.exp(-log_vars)[None] + log_vars[None] + losses.LOG_2PI
    )  # (B, K, D)
    return tf.reduce_logsumexp(log_components, axis=1) - math.log(means.shape[0])


def draw_components(count, num_components: int, seed):
    """Which pseudo-input each of `count` draws of the mixture uses, uniformly: -> (count,) int32."""
    return tf.random.stateless_uniform(
        tf.reshape(count, (1,)), seed, minval=0, maxval=num_components, dtype=tf.int32
    )


def mixture_kl_per_unit(z_mean, z_log_var, components, seed=KL_UNIT_SEED):
    """Each unit's KL of q(z|x) to the marginal of a diagonal Gaussian mixture: -> (B, D)."""
    z = posterior_draw(z_mean, z_log_var, seed)  # (B, D)
    negative_entropy = -0.5 * (losses.LOG_2PI + 1.0 + z_log_var)  # E_q log q(z_d|x), exact
    return negative_entropy - log_marginal_mixture_density(z, *components)


# === The interface ===
class Prior:
    """p(z) over a model's D latent units: what the model, its evaluation and the exporter
    call, whatever the prior.

    Args:
        config: the model config (`prior_name`, `latent_dim`, `density.pseudo_inputs`).
        x_shape: (H, W, C) of the model's x (a pseudo-input's shape).
        posterior: the model's q(z|x), x (N, H, W, C) -> (mean, log_var), (N, D) each.
    """

    # The ELBO's KL term is the sum of `kl_per_unit`'s units (closed form).
    kl_sums_units = True

    def __init__(self, config: ModelConfig, x_shape, posterior: Callable):
        self.latent_dim = int(config.latent_dim)

    @property
    def layers(self) -> Mapping[str, keras.layers.Layer]:
        """The Keras layers holding the prior's weights, which the model owns under these
        attribute names (the names their weights are saved under)."""
        return {}

    def components(self):
        """What an export freezes: parameters computed from the trained weights (the
        VampPrior's (means, log_vars), (K, D) each), or None."""
        return None

    def log_density(self, components=None) -> Callable:
        """A function z (..., D) -> log p(z) (...), its parameters computed once."""
        raise NotImplementedError

    def kl(self, z, z_mean, z_log_var):
        """The KL term of one draw z ~ q(z|x) = N(z_mean, exp(z_log_var)), (B, D) each: -> (B,)."""
        raise NotImplementedError

    def reported_kl(self, z_mean, z_log_var, log_ratio):
        """The KL the k-sample objective reports, given its log p(z_i) - log q(z_i|x) (k, B): -> (B,)."""
        raise NotImplementedError

    def kl_per_unit(self, z_mean, z_log_var):
        """Each unit's KL to the prior for each row: (B, D) -> (B, D) nats."""
        raise NotImplementedError

    def draw(self, num_samples, seed, temperature=1.0, components=None):
        """Draws for generation, stateless from an int64[2] seed: -> (N, D). Temperature T
        scales the noise; `components`: what `components()` returned, frozen."""
        raise NotImplementedError

    def _noise(self, num_samples, seed, temperature):
        """T * eps, eps ~ N(0, I): (N, D)."""
        return tf.random.stateless_normal(tf.stack([num_samples, self.latent_dim]), as_seed(seed)) * temperature


class GaussianPrior(Prior):
    """p(z) = N(0, I): the KL in closed form, draws z = T * eps."""

    def log_density(self, components=None) -> Callable:
        return losses.log_standard_normal

    def kl(self, z, z_mean, z_log_var):
        return losses.kl_divergence(z_mean, z_log_var)

    def reported_kl(self, z_mean, z_log_var, log_ratio):
        return losses.kl_divergence(z_mean, z_log_var)

    def kl_per_unit(self, z_mean, z_log_var):
        return losses.kl_per_unit(z_mean, z_log_var)

    def draw(self, num_samples, seed, temperature=1.0, components=None):
        return self._noise(num_samples, seed, temperature)


class VampPrior(Prior):
    """p(z) = (1/K) sum_k q(z|u_k) at K learned pseudo-inputs u_k (`PseudoInputs`): the KL
    by Monte Carlo, log q(z|x) - log p(z) at the drawn z; a draw picks a component
    uniformly (the seed folded with 1), then z = mu(u_k) + T * sigma(u_k) * eps."""

    kl_sums_units = False

    def __init__(self, config: ModelConfig, x_shape, posterior: Callable):
        super().__init__(config, x_shape, posterior)
        self.count = int(config.density.pseudo_inputs)
        self.pseudo_inputs = PseudoInputs(self.count, x_shape, name="pseudo_inputs", dtype="float32")
        self.posterior = posterior

    @property
    def layers(self) -> Mapping[str, keras.layers.Layer]:
        return {"pseudo_inputs": self.pseudo_inputs}

    def components(self):
        return self.posterior(self.pseudo_inputs())

    def log_density(self, components=None) -> Callable:
        means, log_vars = components if components is not None else self.components()
        return lambda z: log_mixture_density(z, means, log_vars)

    def kl(self, z, z_mean, z_log_var):
        return losses.log_diag_normal(z, z_mean, z_log_var) - self.log_density()(z)

    def reported_kl(self, z_mean, z_log_var, log_ratio):
        return -ops.mean(log_ratio, axis=0)  # Monte Carlo over the k draws

    def kl_per_unit(self, z_mean, z_log_var):
        return mixture_kl_per_unit(z_mean, z_log_var, self.components())

    def draw(self, num_samples, seed, temperature=1.0, components=None):
        eps = self._noise(num_samples, seed, temperature)
        index = draw_components(num_samples, self.count, fold(seed, 1))
        if components is None:
            mean, log_var = self.posterior(self.pseudo_inputs(index))  # (N, D)
        else:
            mean, log_var = (ops.take(c, index, axis=0) for c in components)
        return reparameterise(mean, log_var, eps)


PRIORS: Mapping[str, type[Prior]] = {"gaussian": GaussianPrior, "vamp": VampPrior}


def make_prior(config: ModelConfig, x_shape, posterior: Callable) -> Prior:
    """The prior `config.prior_name` names (see `Prior` for the arguments)."""
    return PRIORS[config.prior_name](config, x_shape, posterior)
