"""Two stochastic layers (HVAE): the ELBO against an independent Monte Carlo estimate, the
IWAE over both layers against NumPy, top-down generation, evaluation, save/load, export."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import logsumexp

from model import ConfigError, ModelConfig, build_model
from model.evaluation import as_seed
from model.hierarchical import HierarchicalVAE
from model.config import DensityConfig
from pipelines.evaluate import evaluate
from serving import contract as C
from serving.export import export_model
from tests.model.test_vae import SMALL, patterns
from tests.model.test_vampprior import numpy_log_normal, numpy_log_vamp
from tests.helpers import with_density

D = SMALL["latent_dim"]
TWO = with_density(SMALL, stochastic_layers=2, pseudo_inputs=5)


def fold(seed, salt):
    return tf.random.experimental.stateless_fold_in(as_seed(seed), salt)


def f64(tensors):
    return [np.asarray(t, np.float64) for t in tensors]


def numpy_log_joint_ratio(model, x, z2, z1):
    """log p(x|z1,z2), log p(z1|z2) + log p(z2) - log q(z1|x,z2) - log q(z2|x) in NumPy for
    rows of x (N, ...) with their draws z2, z1 (N, D); network outputs from the model."""
    z2_mean, z2_log_var = f64(model.encode(x))
    z1_mean, z1_log_var = f64(model.posterior_z1(x, z2.astype(np.float32)))
    p_mean, p_log_var = f64(model.prior_z1_params(z2.astype(np.float32)))
    logits = np.asarray(model.joint_decode_params(z1.astype(np.float32), z2.astype(np.float32)), np.float64)
    logits, flat = logits.reshape(len(x), -1), x.reshape(len(x), -1)
    log_px = -np.sum(np.logaddexp(0.0, logits) - logits * flat, axis=-1)
    if model.model_config.density.prior == "vamp":
        log_pz2 = numpy_log_vamp(model, z2)
    else:
        log_pz2 = -0.5 * np.sum(z2**2 + np.log(2 * np.pi), axis=-1)
    ratio = (numpy_log_normal(z1, p_mean, p_log_var) + log_pz2
             - numpy_log_normal(z1, z1_mean, z1_log_var) - numpy_log_normal(z2, z2_mean, z2_log_var))
    return log_px, ratio


@pytest.fixture(scope="module", params=["gaussian", "vamp"])
def hvae(request):
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(**with_density(TWO, prior=request.param)), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = patterns(512)
    history = model.fit(x, epochs=3, batch_size=64, verbose=0).history
    return model, x, history


def test_a_vae_config_with_two_layers_builds_the_hierarchical_model(hvae):
    model, _, history = hvae
    assert isinstance(model, HierarchicalVAE)
    assert history["loss"][-1] < history["loss"][0]
    assert model.latent_layers == (("z1", D), ("z2", D))
    with pytest.raises(ConfigError, match="ModelConfig.density.stochastic_layers"):
        ModelConfig(kind="cvae", density=DensityConfig(stochastic_layers=2))
    with pytest.raises(ConfigError, match="ModelConfig.density.stochastic_layers"):
        ModelConfig(density=DensityConfig(stochastic_layers=3))


def test_loss_terms_are_one_draw_of_both_layers_with_closed_form_kls(hvae):
    model, x, _ = hvae
    batch, seed = x[:16], tf.constant([6, 1], tf.int64)
    terms = model.loss_terms(batch, training=False, seed=seed)
    z2_mean, z2_log_var = f64(model.encode(batch))
    z2 = z2_mean + np.exp(0.5 * z2_log_var) * tf.random.stateless_normal((16, D), seed).numpy()
    z1_mean, z1_log_var = f64(model.posterior_z1(batch, z2.astype(np.float32)))
    z1 = z1_mean + np.exp(0.5 * z1_log_var) * tf.random.stateless_normal((16, D), fold(seed, 1)).numpy()
    p_mean, p_log_var = f64(model.prior_z1_params(z2.astype(np.float32)))
    log_px, _ = numpy_log_joint_ratio(model, batch, z2, z1)
    kl_z1 = 0.5 * np.sum(p_log_var - z1_log_var + (np.exp(z1_log_var) + (z1_mean - p_mean) ** 2)
                         / np.exp(p_log_var) - 1.0, axis=-1)
    if model.model_config.density.prior == "vamp":
        kl_z2 = numpy_log_normal(z2, z2_mean, z2_log_var) - numpy_log_vamp(model, z2)
    else:
        kl_z2 = -0.5 * np.sum(1 + z2_log_var - z2_mean**2 - np.exp(z2_log_var), axis=-1)
    np.testing.assert_allclose(terms["loss"], -log_px, rtol=1e-4)
    np.testing.assert_allclose(terms["kl"], kl_z1 + kl_z2, rtol=1e-4, atol=1e-4)
    assert float(sum(model.losses)) == pytest.approx(float(np.mean(kl_z1 + kl_z2)), rel=1e-4)


def test_two_layer_elbo_matches_an_independent_monte_carlo_estimate(hvae):
    model, x, _ = hvae
    draws, image = 4000, x[:1]
    tiled = np.repeat(image, draws, axis=0)  # every row gets its own draws
    model_nelbo = np.asarray(model.negative_elbo(tiled, seed=11), np.float64)
    # NumPy: z2 ~ q(z2|x), z1 ~ q(z1|x, z2) from its own generator, every density explicit.
    rng = np.random.default_rng(5)
    z2_mean, z2_log_var = f64(model.encode(tiled))
    z2 = z2_mean + np.exp(0.5 * z2_log_var) * rng.standard_normal((draws, D))
    z1_mean, z1_log_var = f64(model.posterior_z1(tiled, z2.astype(np.float32)))
    z1 = z1_mean + np.exp(0.5 * z1_log_var) * rng.standard_normal((draws, D))
    log_px, ratio = numpy_log_joint_ratio(model, tiled, z2, z1)
    numpy_nelbo = -(log_px + ratio)
    error = np.sqrt(model_nelbo.var() / draws + numpy_nelbo.var() / draws)
    assert abs(model_nelbo.mean() - numpy_nelbo.mean()) < 4 * error + 1e-3


def test_iwae_over_both_layers_is_a_numpy_log_mean_exp_and_above_the_elbo(hvae):
    model, x, _ = hvae
    batch, k = x[:5], 30
    got = np.asarray(model.log_likelihood(batch, k, seed=2, chunk_size=k))
    chunk_seed = fold(2, 0)
    z2_mean, z2_log_var = f64(model.encode(batch))
    eps2 = tf.random.stateless_normal((k, 5, D), fold(chunk_seed, 0)).numpy()
    z2 = (z2_mean + np.exp(0.5 * z2_log_var) * eps2).reshape(-1, D)  # row i*5 + b
    tiled = np.tile(batch, (k, 1, 1, 1))
    z1_mean, z1_log_var = f64(model.posterior_z1(tiled, z2.astype(np.float32)))
    z1 = z1_mean + np.exp(0.5 * z1_log_var) * tf.random.stateless_normal((k * 5, D), fold(chunk_seed, 1)).numpy()
    log_px, ratio = numpy_log_joint_ratio(model, tiled, z2, z1)
    expected = logsumexp((log_px + ratio).reshape(k, 5), axis=0) - np.log(k)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # In chunks: the same estimator (other draws), and above the ELBO on average.
    chunked = np.asarray(model.log_likelihood(batch, 200, seed=3, chunk_size=64))
    elbo = -np.mean([np.asarray(model.negative_elbo(batch, seed=s)) for s in range(20)], axis=0)
    assert chunked.mean() > elbo.mean()


def test_importance_weighted_training_over_both_layers(hvae):
    model, x, _ = hvae
    model.train_samples = 4
    try:
        terms = model.loss_terms(x[:8], seed=tf.constant([1, 3], tf.int64))
    finally:
        model.train_samples = 1
    assert all(t.shape == (8,) for t in terms.values()) and np.all(np.isfinite(terms["loss"]))
    assert [float(v) for v in model.losses] == [0.0]
    assert np.mean(terms["reconstruction"] + terms["kl"]) >= np.mean(terms["loss"])


def test_generation_is_top_down_and_evaluation_reports_each_layer(hvae):
    model, x, _ = hvae
    seed = tf.constant([4, 4], tf.int64)
    draws = model.prior_draw(6, seed, 0.0)
    images, z2 = model.decode_draw(draws)
    # At temperature 0, z1 is the mean of p(z1|z2): generate's image is decode(z2).
    np.testing.assert_allclose(images, model.decode(z2), atol=1e-6)
    hot, _ = model.decode_draw(model.prior_draw(6, seed, 1.0))
    assert hot.shape == (6, 8, 8, 1) and np.abs(np.asarray(hot) - np.asarray(images)).max() > 1e-3
    assert model.reconstruct(x[:4]).shape == (4, 8, 8, 1)
    assert model.kl_per_unit(x[:4]).shape == (4, 2 * D)
    dataset = tf.data.Dataset.from_tensor_slices((x[:64], np.zeros(64, np.int64))).batch(32)
    metrics = evaluate(model, dataset, iwae_k=10, batch_size=32, verbose=False)
    assert len(metrics["kl_per_unit"]) == 2 * D
    assert metrics["active_units"] == metrics["active_units_z1"] + metrics["active_units_z2"]
    assert metrics["test_reconstruction"] + metrics["test_kl"] == pytest.approx(metrics["test_nelbo"])
    assert metrics["test_kl_z1"] + metrics["test_kl_z2"] == pytest.approx(sum(metrics["kl_per_unit"]))


def test_save_load_and_export_round_trip(hvae, tmp_path):
    model, x, _ = hvae
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, HierarchicalVAE) and loaded.model_config == model.model_config
    np.testing.assert_array_equal(loaded.reconstruct(x[:4]), model.reconstruct(x[:4]))
    np.testing.assert_array_equal(loaded.negative_elbo(x[:4]), model.negative_elbo(x[:4]))
    version = export_model(loaded, tmp_path / "exports")
    served = tf.saved_model.load(str(version))
    out = served.signatures[C.GENERATE](num_samples=tf.constant(5, tf.int32), seed=tf.constant([1, 2], tf.int64),
                                        temperature=tf.constant(0.8))
    assert out[C.IMAGES].shape == (5, 8, 8, 1) and out[C.Z].shape == (5, D)
    expected_images, expected_z = model.decode_draw(model.prior_draw(5, tf.constant([1, 2], tf.int64), 0.8))
    np.testing.assert_allclose(out[C.IMAGES], expected_images, atol=1e-5)
    np.testing.assert_allclose(out[C.Z], expected_z, atol=1e-5)
    batch = served.signatures[C.GENERATE_BATCH](num_samples=tf.constant([5, 2], tf.int32),
                                                seed=tf.constant([[1, 2], [3, 4]], tf.int64),
                                                temperature=tf.constant([0.8, 1.0]))
    np.testing.assert_allclose(batch[C.IMAGES][:5], out[C.IMAGES], atol=1e-5)
    encoded = served.signatures[C.ENCODE](images=tf.constant(x[:5]))
    np.testing.assert_allclose(encoded[C.Z_MEAN], model.encode(x[:5])[0], atol=1e-5)  # the top layer z2
    decoded = served.signatures[C.DECODE](z=tf.constant(np.zeros((2, D), np.float32)))
    np.testing.assert_allclose(decoded[C.IMAGES], model.decode(np.zeros((2, D), np.float32)), atol=1e-5)


@pytest.mark.slow
def test_reload_in_a_fresh_process_after_importing_only_the_vae(tmp_path):
    model = build_model(ModelConfig(**TWO), seed=0)
    model.build()
    model.save(tmp_path / "model.keras")
    script = ("import sys, keras\nfrom model import VAE  # registers the custom Keras objects\n"
              "m = keras.models.load_model(sys.argv[1] + '/model.keras')\nprint(type(m).__name__)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "HierarchicalVAE"
