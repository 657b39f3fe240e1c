"""The VAE model: objective, training signals, IWAE, and save/load."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import VAE, ModelConfig
from model.evaluation import iwae_chunk_size, iwae_log_likelihood, negative_elbo
from model.config import DensityConfig
from tests.helpers import assert_config_round_trip, with_density

# The N(0, I) prior (not the kind vae default, the VampPrior): these tests compute its KL in closed form.
SMALL = dict(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(32,), conv_filters=(4, 8),
             density=DensityConfig(prior="gaussian"))


def patterns(n=1024, seed=0):
    """Binary 8x8 images from four prototypes with 5% of the pixels flipped."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((4, 8, 8, 1)) < 0.5
    images = prototypes[rng.integers(0, 4, n)]
    flips = rng.random(images.shape) < 0.05
    return np.logical_xor(images, flips).astype("float32")


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    vae = VAE(ModelConfig(**SMALL), seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = patterns()
    history = vae.fit(x, validation_data=(x[:256],), epochs=8, batch_size=64, verbose=0)
    return vae, x, history.history


def test_fit_reports_loss_reconstruction_and_kl(trained):
    _, _, history = trained
    assert set(history) == {"loss", "reconstruction", "kl", "val_loss", "val_reconstruction", "val_kl"}
    # In evaluation the KL weight is 1: val_loss is the negative ELBO.
    np.testing.assert_allclose(
        history["val_loss"][-1], history["val_reconstruction"][-1] + history["val_kl"][-1], rtol=1e-4
    )
    assert history["loss"][-1] < 0.6 * history["loss"][0]


def test_kl_is_added_with_add_loss():
    vae = VAE(ModelConfig(**SMALL), seed=0)
    out = vae(patterns(16))
    assert len(vae.losses) == 1
    np.testing.assert_allclose(float(vae.losses[0]), float(np.mean(out["kl"])), rtol=1e-6)


def test_kl_warmup_and_beta_weight_the_training_loss_only():
    vae = VAE(ModelConfig(**SMALL, beta=0.5, kl_warmup_steps=100), seed=0)
    vae.compile(optimizer="adam")
    vae.build()
    assert float(vae.kl_weight(training=True)) == 0.0
    vae.optimizer.iterations.assign(50)
    assert float(vae.kl_weight(training=True)) == pytest.approx(0.25)
    vae.optimizer.iterations.assign(1000)
    assert float(vae.kl_weight(training=True)) == pytest.approx(0.5)
    assert float(vae.kl_weight(training=False)) == 1.0


def test_a_trainer_hands_the_warmup_ramp_and_the_samples_through_set_schedule():
    vae = VAE(ModelConfig(**with_density(SMALL, train_samples=4), beta=0.5, kl_warmup_steps=100), seed=0)
    vae.compile(optimizer="adam")
    vae.build()
    ramp = tf.Variable(0.5)
    vae.set_schedule(kl_warmup_ramp=ramp.read_value, train_samples=1)
    assert float(vae.kl_weight(training=True)) == pytest.approx(0.25)  # the ramp, not the steps
    ramp.assign(1.0)
    assert float(vae.kl_weight(training=True)) == pytest.approx(0.5)
    assert "log_px_z" not in vae(patterns(4))  # one sample: the ELBO path
    vae.set_schedule(train_samples=4)
    assert vae(patterns(4))["log_px_z"].shape == (4, 4)  # (k, B): the k-sample objective
    vae.set_schedule()  # None leaves both
    assert vae.train_samples == 4 and float(vae.kl_weight(training=True)) == pytest.approx(0.5)


def test_public_methods_shapes_and_ranges(trained):
    vae, x, _ = trained
    z_mean, z_log_var = vae.encode(x[:5])
    assert z_mean.shape == (5, 3) and z_log_var.shape == (5, 3)
    images = np.asarray(vae.decode(z_mean))
    assert images.shape == (5, 8, 8, 1) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_allclose(vae.reconstruct(x[:5]), images, rtol=1e-6)
    a, b = vae.sample(4, seed=1), vae.sample(4, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, vae.sample(4, seed=2))


def test_iwae_is_above_the_elbo_and_grows_with_k(trained):
    vae, x, _ = trained
    batch = x[:128]
    elbo = np.mean([-np.mean(negative_elbo(vae, batch, seed=s)) for s in range(10)])
    bounds = [np.mean([np.mean(iwae_log_likelihood(vae, batch, k, seed=s)) for s in range(3)])
              for k in (1, 10, 100)]
    np.testing.assert_allclose(bounds[0], elbo, atol=0.3)  # k = 1 is the ELBO
    assert elbo < bounds[1] < bounds[2]
    assert bounds[2] - elbo > 0.05


def test_iwae_in_chunks_fits_k_5000(trained):
    vae, x, _ = trained
    assert iwae_chunk_size(500, (28, 28, 1), 5000) < 5000
    chunked = np.asarray(iwae_log_likelihood(vae, x[:16], 5000, seed=0, chunk_size=700))
    whole = np.asarray(iwae_log_likelihood(vae, x[:16], 5000, seed=1, chunk_size=5000))
    assert chunked.shape == (16,) and np.all(np.isfinite(chunked))
    # Two independent k=5000 estimates: a mistake in combining chunks (say, a missing
    # log of the chunk count) would shift every value by nats.
    assert abs(chunked.mean() - whole.mean()) < 0.1


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_config_and_save_load_round_trip(architecture, likelihood, tmp_path):
    vae = VAE(ModelConfig(**SMALL, architecture=architecture, likelihood=likelihood), seed=3)
    vae.compile(optimizer="adam")
    x = patterns(64)
    vae.fit(x, epochs=1, batch_size=32, verbose=0)
    assert_config_round_trip(vae)
    vae.save(tmp_path / "vae.keras")
    loaded = keras.models.load_model(tmp_path / "vae.keras")
    assert loaded.model_config == vae.model_config
    for method in ("reconstruct",):
        np.testing.assert_array_equal(getattr(loaded, method)(x), getattr(vae, method)(x))
    np.testing.assert_array_equal(loaded.decode(np.ones((2, 3))), vae.decode(np.ones((2, 3))))


@pytest.mark.slow
def test_reload_in_a_fresh_process_gives_identical_outputs(trained, tmp_path):
    vae, x, _ = trained
    vae.save(tmp_path / "vae.keras")
    np.save(tmp_path / "x.npy", x[:32])
    script = (
        "import sys, numpy as np, keras\nfrom model import VAE  # registers the custom Keras objects\n"
        "d = sys.argv[1]\n"
        "m = keras.models.load_model(d + '/vae.keras')\n"
        "x = np.load(d + '/x.npy')\n"
        "np.save(d + '/mean.npy', np.asarray(m.encode(x)[0]))\n"
        "np.save(d + '/recon.npy', np.asarray(m.reconstruct(x)))\n"
        "print(__import__('json').dumps(m.get_config()['model_config']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == vae.model_config.to_dict()
    np.testing.assert_array_equal(np.load(tmp_path / "mean.npy"), vae.encode(x[:32])[0])
    np.testing.assert_array_equal(np.load(tmp_path / "recon.npy"), vae.reconstruct(x[:32]))


def test_loss_terms_are_the_per_example_negative_elbo_computed_independently():
    vae = VAE(ModelConfig(**SMALL), seed=0)
    x = patterns(16)
    labels = np.arange(16) % 4
    seed = tf.constant([3, 1], tf.int64)
    terms = vae.loss_terms((x, labels), training=False, seed=seed)  # a batch that carries labels
    assert set(terms) == set(VAE.LOSS_TERMS) and all(t.shape == (16,) for t in terms.values())
    z_mean, z_log_var = (np.asarray(t, "float64") for t in vae.encode(x))
    z = z_mean + np.exp(0.5 * z_log_var) * tf.random.stateless_normal((16, 3), seed).numpy()
    logits = np.asarray(vae.decode_params(z.astype("float32")), "float64").reshape(16, -1)
    flat = x.reshape(16, -1)
    bce = np.sum(np.logaddexp(0, logits) - logits * flat, axis=1)  # -log Bernoulli(x | sigmoid(l))
    kl = -0.5 * np.sum(1 + z_log_var - z_mean**2 - np.exp(z_log_var), axis=1)
    np.testing.assert_allclose(terms["reconstruction"], bce, rtol=1e-4)
    np.testing.assert_allclose(terms["kl"], kl, rtol=1e-4)
    # The objective is mean(loss) + the add_loss KL: the negative ELBO in evaluation.
    objective = float(np.mean(terms["loss"])) + float(sum(vae.losses))
    assert objective == pytest.approx(float(np.mean(bce + kl)), rel=1e-5)
    np.testing.assert_allclose(vae.negative_elbo(x, seed=0), vae.negative_elbo(x, seed=0))


def test_fit_minimises_the_objective_of_loss_terms():
    vae = VAE(ModelConfig(**SMALL, beta=0.5), seed=0)
    vae.compile(optimizer=keras.optimizers.SGD(0.0))  # no step: the loss is the first batch's
    x = patterns(32)
    history = vae.fit(x, epochs=1, batch_size=32, verbose=0, shuffle=False).history
    terms = vae.loss_terms(x, training=True, seed=None)
    # One stochastic draw each, so compare up to the sampling noise of 32 images.
    expected = float(np.mean(terms["loss"]) + 0.5 * np.mean(terms["kl"]))
    assert history["loss"][0] == pytest.approx(expected, rel=0.05)
    assert history["kl"][0] == pytest.approx(float(np.mean(terms["kl"])), rel=1e-3)
