"""The VampPrior: p(z) = (1/K) sum_k q(z|u_k) at learned pseudo-inputs, checked against an
explicit NumPy log-sum-exp; its KL, IWAE, generation, evaluation, save/load and export."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import logsumexp

from model import VAE, ConfigError, ModelConfig
from model.evaluation import as_seed, iwae_log_likelihood
from model.config import DensityConfig, M2Config
from pipelines.evaluate import evaluate
from serving import contract as C
from serving.export import export_model
from tests.model.test_vae import SMALL, patterns
from tests.helpers import with_density

K = 7
VAMP = with_density(SMALL, prior="vamp", pseudo_inputs=K)


def numpy_log_normal(z, mean, log_var):
    """log N(z | mean, diag(exp(log_var))) summed over the last axis, float64."""
    return -0.5 * np.sum((z - mean) ** 2 / np.exp(log_var) + log_var + np.log(2 * np.pi), axis=-1)


def numpy_log_vamp(vae, z):
    """log (1/K) sum_k N(z | mu(u_k), sigma^2(u_k)) by an explicit log-sum-exp: (N, D) -> (N,)."""
    u = np.clip(np.asarray(vae.pseudo_inputs.values), 0.0, 1.0)
    means, log_vars = (np.asarray(t, np.float64) for t in vae.encode(u))  # (K, D)
    per_component = np.stack([numpy_log_normal(z, means[k], log_vars[k]) for k in range(len(u))], axis=-1)
    return logsumexp(per_component, axis=-1) - np.log(len(u))


@pytest.fixture(scope="module")
def vamp():
    keras.utils.set_random_seed(0)
    vae = VAE(ModelConfig(**VAMP), seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = patterns(512)
    history = vae.fit(x, epochs=4, batch_size=64, verbose=0).history
    return vae, x, history


def test_fit_trains_the_networks_and_the_pseudo_inputs(vamp):
    vae, _, history = vamp
    assert history["loss"][-1] < history["loss"][0] - 3.0  # nats
    fresh = VAE(ModelConfig(**VAMP), seed=0)
    fresh.build()
    u = np.asarray(vae.pseudo_inputs())
    assert u.shape == (K, 8, 8, 1) and u.min() >= 0 and u.max() <= 1
    assert np.abs(np.asarray(vae.pseudo_inputs.values) - np.asarray(fresh.pseudo_inputs.values)).max() > 1e-3


def test_log_prior_is_an_explicit_numpy_log_sum_exp_over_the_pseudo_inputs(vamp):
    vae, _, _ = vamp
    z = np.random.default_rng(0).normal(size=(4, 5, 3)) * 1.5  # any leading shape
    got = np.asarray(vae.prior.log_density()(z.astype(np.float32)))
    assert got.shape == (4, 5)
    np.testing.assert_allclose(got, numpy_log_vamp(vae, z.reshape(-1, 3)).reshape(4, 5), rtol=1e-4, atol=1e-4)


def test_kl_is_monte_carlo_log_q_minus_log_p_and_goes_through_add_loss(vamp):
    vae, x, _ = vamp
    batch, seed = x[:16], tf.constant([4, 2], tf.int64)
    terms = vae.loss_terms(batch, training=False, seed=seed)
    z_mean, z_log_var = (np.asarray(t, np.float64) for t in vae.encode(batch))
    z = z_mean + np.exp(0.5 * z_log_var) * tf.random.stateless_normal((16, 3), seed).numpy()
    kl = numpy_log_normal(z, z_mean, z_log_var) - numpy_log_vamp(vae, z)
    np.testing.assert_allclose(terms["kl"], kl, rtol=1e-4, atol=1e-4)
    assert len(vae.losses) == 1 and float(vae.losses[0]) == pytest.approx(float(np.mean(kl)), rel=1e-4)


def test_iwae_estimate_uses_the_exact_log_prior(vamp):
    vae, x, _ = vamp
    batch, k = x[:6], 20
    got = np.asarray(iwae_log_likelihood(vae, batch, k, seed=3, chunk_size=k))
    z_mean, z_log_var = (np.asarray(t, np.float64) for t in vae.encode(batch))
    chunk_seed = tf.random.experimental.stateless_fold_in(as_seed(3), 0)
    z = z_mean + np.exp(0.5 * z_log_var) * tf.random.stateless_normal((k, 6, 3), chunk_seed).numpy()
    logits = np.asarray(vae.decode_params(z.reshape(-1, 3).astype(np.float32)), np.float64).reshape(k, 6, -1)
    flat = batch.reshape(1, 6, -1)
    log_px_z = -np.sum(np.logaddexp(0.0, logits) - logits * flat, axis=-1)
    log_pz = numpy_log_vamp(vae, z.reshape(-1, 3)).reshape(k, 6)
    expected = logsumexp(log_px_z + log_pz - numpy_log_normal(z, z_mean, z_log_var), axis=0) - np.log(k)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_generation_draws_a_pseudo_input_then_its_posterior(vamp):
    vae, _, _ = vamp
    u = np.asarray(vae.pseudo_inputs())
    means, log_vars = (np.asarray(t) for t in vae.encode(u))
    seed = tf.constant([9, 9], tf.int64)
    # Temperature 0: each draw is one component's mean.
    at_mode = np.asarray(vae.prior_draw(200, seed, 0.0))
    distance = np.abs(at_mode[:, None, :] - means[None]).max(axis=-1)  # (200, K)
    assert np.all(distance.min(axis=1) < 1e-5)
    assert len(set(distance.argmin(axis=1))) == K  # every pseudo-input gets picked
    # Temperature 1: the same components, scaled noise; the same seed gives the same draws.
    draws = np.asarray(vae.prior_draw(200, seed, 1.0))
    np.testing.assert_array_equal(draws, vae.prior_draw(200, seed, 1.0))
    chosen = distance.argmin(axis=1)
    eps = (draws - means[chosen]) / np.exp(0.5 * log_vars[chosen])
    np.testing.assert_allclose(eps, tf.random.stateless_normal((200, 3), seed).numpy(), atol=1e-3)
    images = np.asarray(vae.sample(5, seed=1))
    assert images.shape == (5, 8, 8, 1) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images, vae.sample(5, seed=1))


def test_evaluation_reports_the_elbo_kl_and_active_units(vamp):
    vae, x, _ = vamp
    dataset = tf.data.Dataset.from_tensor_slices((x[:64], np.zeros(64, np.int64))).batch(32)
    metrics = evaluate(vae, dataset, iwae_k=10, batch_size=32, verbose=False)
    assert len(metrics["kl_per_unit"]) == 3 and 0 <= metrics["active_units"] <= 3
    assert metrics["test_kl"] > 0
    assert metrics["test_reconstruction"] + metrics["test_kl"] == pytest.approx(metrics["test_nelbo"])
    assert metrics["test_iwae_nll"] < metrics["test_nelbo"] + 0.5


def test_save_load_and_export_round_trip(vamp, tmp_path):
    vae, x, _ = vamp
    vae.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.model_config == vae.model_config
    np.testing.assert_array_equal(loaded.pseudo_inputs(), vae.pseudo_inputs())
    seed = tf.constant([1, 2], tf.int64)
    np.testing.assert_array_equal(loaded.prior_draw(4, seed, 1.0), vae.prior_draw(4, seed, 1.0))
    version = export_model(loaded, tmp_path / "exports")
    served = tf.saved_model.load(str(version))
    out = served.signatures[C.GENERATE](num_samples=tf.constant(6, tf.int32), seed=tf.constant([1, 2], tf.int64),
                                        temperature=tf.constant(1.0))
    assert out[C.IMAGES].shape == (6, 8, 8, 1) and out[C.Z].shape == (6, 3)
    np.testing.assert_allclose(out[C.Z], vae.prior_draw(6, seed, 1.0), atol=1e-5)
    batch = served.signatures[C.GENERATE_BATCH](num_samples=tf.constant([2, 3], tf.int32),
                                                seed=tf.constant([[1, 2], [3, 4]], tf.int64),
                                                temperature=tf.constant([1.0, 0.5]))
    np.testing.assert_allclose(batch[C.Z][:2], out[C.Z][:2], atol=1e-6)
    encoded = served.signatures[C.ENCODE](images=tf.constant(x[:5]))
    assert encoded[C.Z_MEAN].shape == (5, 3)
    np.testing.assert_allclose(encoded[C.Z_MEAN], vae.encode(x[:5])[0], atol=1e-5)
    config = json.loads((version / C.ASSETS_EXTRA / C.CONFIG_FILE).read_text())
    assert config["model"]["density"]["prior"] == "vamp"


def test_vampprior_is_refused_for_conditional_kinds():
    with pytest.raises(ConfigError, match="ModelConfig.density.prior"):
        ModelConfig(kind="cvae", density=DensityConfig(prior="vamp"))
    with pytest.raises(ConfigError, match="ModelConfig.density.prior"):
        ModelConfig(density=DensityConfig(prior="mixture"))
    with pytest.raises(ConfigError, match="ModelConfig.density.pseudo_inputs"):
        ModelConfig(density=DensityConfig(prior="vamp", pseudo_inputs=0))


def test_the_default_prior_is_the_vampprior_for_kind_vae_and_normal_for_the_conditional_kinds():
    assert ModelConfig().density.prior is None and ModelConfig().density.pseudo_inputs == 100
    assert ModelConfig().prior_name == "vamp"
    assert ModelConfig(kind="cvae").prior_name == ModelConfig(kind="m2", m2=M2Config(alpha=1.0)).prior_name == "gaussian"
    assert ModelConfig(density=DensityConfig(prior="gaussian")).prior_name == "gaussian"
    assert ModelConfig().override("kind=cvae").prior_name == "gaussian"
    # a config saved before the default changed keeps its explicit prior
    assert ModelConfig.from_dict({"prior": "gaussian", "pseudo_inputs": 500}).prior_name == "gaussian"
    default = VAE(ModelConfig(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(32,)), seed=0)
    assert hasattr(default, "pseudo_inputs") and default.prior.components()[0].shape == (100, 3)


def test_vampprior_trains_with_importance_samples():
    vae = VAE(ModelConfig(**with_density(VAMP, train_samples=4)), seed=0)
    terms = vae.loss_terms(patterns(8), seed=tf.constant([0, 1], tf.int64))
    assert all(t.shape == (8,) for t in terms.values()) and np.all(np.isfinite(terms["loss"]))
    assert terms["reconstruction"].numpy().mean() + terms["kl"].numpy().mean() >= terms["loss"].numpy().mean()
