"""The importance-weighted training objective (`train_samples` k): k = 1 is the ELBO
objective unchanged, k > 1 the IWAE bound, each checked against NumPy."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import logsumexp

from model import CVAE, VAE, ConfigError, ModelConfig
from model.config import DensityConfig, M2Config
from tests.model.test_vae import SMALL, patterns
from tests.helpers import with_density


def numpy_log_weights(vae, x, z):
    """log p(x|z_i) and log p(z_i) - log q(z_i|x) in NumPy float64 for draws z (k, B, D),
    the networks' outputs taken from the model, N(0, I) prior, Bernoulli pixels."""
    z_mean, z_log_var = (np.asarray(t, np.float64) for t in vae.encode(x))
    k, batch, dim = z.shape
    logits = np.asarray(vae.decode_params(z.reshape(-1, dim).astype(np.float32)), np.float64)
    logits = logits.reshape(k, batch, -1)
    flat = x.reshape(1, batch, -1).astype(np.float64)
    log_px_z = -np.sum(np.logaddexp(0.0, logits) - logits * flat, axis=-1)  # (k, B)
    log_pz = -0.5 * np.sum(z**2 + np.log(2 * np.pi), axis=-1)
    log_qz = -0.5 * np.sum((z - z_mean) ** 2 / np.exp(z_log_var) + z_log_var + np.log(2 * np.pi), axis=-1)
    return log_px_z, log_pz - log_qz


def posterior_draws(vae, x, k, seed):
    """The draws the model takes for a stateless seed: z = mu + sigma * eps, (k, B, D)."""
    z_mean, z_log_var = (np.asarray(t, np.float64) for t in vae.encode(x))
    eps = tf.random.stateless_normal((k, *z_mean.shape), seed).numpy().astype(np.float64)
    return z_mean + np.exp(0.5 * z_log_var) * eps


def test_k1_objective_is_the_elbo_objective_of_today():
    x = patterns(16)
    seed = tf.constant([3, 1], tf.int64)
    vae = VAE(ModelConfig(**with_density(SMALL, train_samples=1)), seed=0)
    terms = vae.loss_terms(x, training=False, seed=seed)
    z = posterior_draws(vae, x, 1, seed)[0]
    # Today's objective: -log p(x|z) per example in `loss`, closed-form KL with add_loss.
    log_px_z, _ = numpy_log_weights(vae, x, z[None])
    z_mean, z_log_var = (np.asarray(t, np.float64) for t in vae.encode(x))
    kl = -0.5 * np.sum(1 + z_log_var - z_mean**2 - np.exp(z_log_var), axis=1)
    np.testing.assert_allclose(terms["loss"], -log_px_z[0], rtol=1e-5)
    np.testing.assert_allclose(terms["kl"], kl, rtol=1e-5)
    objective = float(np.mean(terms["loss"])) + float(sum(vae.losses))
    assert objective == pytest.approx(float(np.mean(-log_px_z[0] + kl)), rel=1e-5)
    # The same weights with the attribute switched from k = 4 back to 1: the same numbers.
    other = VAE(ModelConfig(**with_density(SMALL, train_samples=4)), seed=0)
    other.build()
    other.set_weights(vae.get_weights())
    other.train_samples = 1
    again = other.loss_terms(x, training=False, seed=seed)
    for name in VAE.LOSS_TERMS:
        np.testing.assert_array_equal(again[name], terms[name])
    assert float(sum(other.losses)) == float(sum(vae.losses))


def test_iwae_loss_is_a_numpy_log_mean_exp_of_the_same_weights():
    k, x = 5, patterns(12)
    seed = tf.constant([7, 2], tf.int64)
    vae = VAE(ModelConfig(**with_density(SMALL, train_samples=k)), seed=0)
    terms = vae.loss_terms(x, training=False, seed=seed)
    log_px_z, log_ratio = numpy_log_weights(vae, x, posterior_draws(vae, x, k, seed))
    expected = -(logsumexp(log_px_z + log_ratio, axis=0) - np.log(k))
    np.testing.assert_allclose(terms["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(terms["reconstruction"], -log_px_z.mean(axis=0), rtol=1e-5)
    # The whole bound lives in `loss`: add_loss carries 0, so the objective is mean(loss).
    assert [float(v) for v in vae.losses] == [0.0]
    objective = float(np.mean(terms["loss"])) + float(sum(vae.losses))
    assert objective == pytest.approx(float(np.mean(expected)), rel=1e-6)


def test_kl_weight_scales_the_log_ratio_inside_the_iwae_bound_while_training():
    k, x = 3, patterns(8)
    seed = tf.constant([1, 1], tf.int64)
    vae = VAE(ModelConfig(**with_density(SMALL, train_samples=k), beta=0.5), seed=0)
    vae.compile(optimizer="adam")
    terms = vae.loss_terms(x, training=True, seed=seed)
    log_px_z, log_ratio = numpy_log_weights(vae, x, posterior_draws(vae, x, k, seed))
    expected = -(logsumexp(log_px_z + 0.5 * log_ratio, axis=0) - np.log(k))
    np.testing.assert_allclose(terms["loss"], expected, rtol=1e-5)


def test_iwae_bound_is_at_least_the_elbo_on_average():
    keras.utils.set_random_seed(0)
    vae = VAE(ModelConfig(**SMALL), seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = patterns(512)
    vae.fit(x, epochs=3, batch_size=64, verbose=0)
    batch = x[:128]
    seeds = [tf.constant([s, 0], tf.int64) for s in range(8)]
    vae.train_samples = 1
    elbo = np.mean([-(np.mean(vae.loss_terms(batch, seed=s)["loss"]) + float(sum(vae.losses))) for s in seeds])
    vae.train_samples = 10
    iwae = np.mean([-np.mean(vae.loss_terms(batch, seed=s)["loss"]) for s in seeds])
    assert iwae > elbo + 0.05
    # For the same draws, log-mean-exp of the weights >= the mean of the log-weights (Jensen).
    terms = vae.loss_terms(batch, seed=seeds[0])
    log_px_z, log_ratio = numpy_log_weights(vae, batch, posterior_draws(vae, batch, 10, seeds[0]))
    assert np.all(-np.asarray(terms["loss"]) >= (log_px_z + log_ratio).mean(axis=0) - 1e-4)


def test_changing_train_samples_and_retracing_switches_the_compiled_objective():
    vae = VAE(ModelConfig(**SMALL), seed=0)
    x = tf.constant(patterns(8))
    seed = tf.constant([5, 5], tf.int64)

    def make_step(jit=False):
        return tf.function(lambda b: vae.loss_terms(b, training=True, seed=seed)["loss"], jit_compile=jit)

    step = make_step()
    single = step(x)
    vae.train_samples = 6
    np.testing.assert_array_equal(step(x), single)  # already traced: k is read at trace time
    several = make_step()(x)
    log_px_z, log_ratio = numpy_log_weights(vae, x.numpy(), posterior_draws(vae, x.numpy(), 6, seed))
    np.testing.assert_allclose(several, -(logsumexp(log_px_z + log_ratio, axis=0) - np.log(6)), rtol=1e-4)
    # The trainer compiles its step with XLA (whose random bits differ): it traces too.
    compiled = make_step(jit=True)(x)
    assert compiled.shape == (8,) and np.all(np.isfinite(compiled))


def test_fit_with_importance_samples_trains_and_reports_the_terms():
    keras.utils.set_random_seed(1)
    vae = VAE(ModelConfig(**with_density(SMALL, train_samples=4)), seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = patterns(256)
    history = vae.fit(x, epochs=3, batch_size=64, verbose=0).history
    assert {"loss", "reconstruction", "kl"} <= set(history)
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
    # The k-draw ELBO (reconstruction + kl) is above the IWAE loss.
    assert history["reconstruction"][-1] + history["kl"][-1] >= history["loss"][-1] - 1e-3


def test_cvae_trains_on_the_iwae_bound_with_its_condition_tiled():
    k, x = 3, patterns(6)
    labels = np.arange(6) % 4
    cvae = CVAE(ModelConfig(**with_density(SMALL, train_samples=k), kind="cvae", num_classes=4), seed=0)
    terms = cvae.loss_terms((x, labels), seed=tf.constant([2, 2], tf.int64))
    assert all(t.shape == (6,) for t in terms.values())
    assert np.all(np.isfinite(terms["loss"]))


def test_m2_refuses_importance_samples_with_a_clear_error():
    with pytest.raises(ConfigError, match="ModelConfig.density.train_samples"):
        ModelConfig(kind="m2", density=DensityConfig(train_samples=5), m2=M2Config(alpha=1.0))
    with pytest.raises(ConfigError, match="ModelConfig.density.train_samples"):
        ModelConfig(density=DensityConfig(train_samples=0))
