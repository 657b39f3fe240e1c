"""The prior interface (`model.priors.Prior`): one lookup from `prior_name`, and the
Gaussian and the VampPrior answering the same calls."""

import numpy as np
import pytest
import tensorflow as tf

from model import ModelConfig, build_model
from model.config import DensityConfig, PRIORS as PRIOR_NAMES
from model.priors import PRIORS, GaussianPrior, VampPrior
from tests.helpers import with_density

SMALL = dict(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(16,), density=DensityConfig(pseudo_inputs=5))
SEED = tf.constant([4, 2], tf.int64)


def test_every_prior_name_has_a_prior():
    assert set(PRIORS) == set(PRIOR_NAMES)


@pytest.mark.parametrize("name, cls", [("gaussian", GaussianPrior), ("vamp", VampPrior)])
def test_a_model_builds_the_prior_its_config_names(name, cls):
    model = build_model(ModelConfig(**with_density(SMALL, prior=name)), seed=0)
    model.build()
    assert type(model.prior) is cls
    rng = np.random.default_rng(0)
    z_mean = rng.normal(size=(6, 3)).astype("float32")
    z_log_var = rng.normal(size=(6, 3)).astype("float32") * 0.1
    z = rng.normal(size=(6, 3)).astype("float32")
    assert model.prior.kl(z, z_mean, z_log_var).shape == (6,)
    assert model.prior.kl_per_unit(z_mean, z_log_var).shape == (6, 3)
    assert model.prior.log_density()(z).shape == (6,)
    draws = model.prior.draw(7, SEED, 1.0)
    assert draws.shape == (7, 3)
    components = model.prior.components()  # what an export freezes: the same draws from them
    np.testing.assert_allclose(model.prior.draw(7, SEED, 1.0, components), draws, atol=1e-6)


def test_the_gaussian_kl_is_closed_form_and_its_units_sum_to_it():
    prior = GaussianPrior(ModelConfig(**with_density(SMALL, prior="gaussian")), (8, 8, 1), posterior=None)
    z_mean = np.array([[0.5, -1.0, 0.0]], "float32")
    z_log_var = np.array([[0.0, np.log(2.0), -1.0]], "float32")
    expected = -0.5 * np.sum(1 + z_log_var - z_mean**2 - np.exp(z_log_var), axis=-1)
    np.testing.assert_allclose(prior.kl(z_mean, z_mean, z_log_var), expected, rtol=1e-6)
    np.testing.assert_allclose(np.sum(prior.kl_per_unit(z_mean, z_log_var), -1), expected, rtol=1e-6)
    assert prior.kl_sums_units and prior.components() is None and prior.layers == {}
    np.testing.assert_array_equal(prior.draw(4, SEED, 0.0), np.zeros((4, 3)))  # T = 0: the mode


def test_the_vampprior_owns_its_pseudo_inputs_as_the_models_weights():
    model = build_model(ModelConfig(**with_density(SMALL, prior="vamp")), seed=0)
    model.build()
    assert model.pseudo_inputs is model.prior.pseudo_inputs
    assert not model.prior.kl_sums_units
    means, log_vars = model.prior.components()
    assert means.shape == log_vars.shape == (5, 3)
    # At T = 0 a draw is the mean of the component it picked.
    at_mode = np.asarray(model.prior.draw(50, SEED, 0.0))
    assert all(np.isclose(row, np.asarray(means), atol=1e-6).all(axis=1).any() for row in at_mode)
