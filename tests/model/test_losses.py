"""The maths of the objective against independent computations."""

import numpy as np
import pytest
import tensorflow as tf

from model import losses


def test_kl_closed_form_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 4)).astype("float32")
    log_var = rng.normal(scale=0.5, size=(3, 4)).astype("float32")
    closed = np.asarray(losses.kl_divergence(mean, log_var))
    n = 200_000
    z = mean + np.exp(0.5 * log_var) * rng.standard_normal((n, 3, 4)).astype("float32")
    log_q = np.asarray(losses.log_diag_normal(z, mean, log_var))
    log_p = np.asarray(losses.log_standard_normal(z))
    monte_carlo = (log_q - log_p).mean(axis=0)
    np.testing.assert_allclose(closed, monte_carlo, rtol=0.02, atol=0.02)
    assert closed.shape == (3,)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = np.zeros((2, 5), "float32")
    np.testing.assert_allclose(losses.kl_divergence(zeros, zeros), 0.0, atol=1e-7)
    assert np.all(np.asarray(losses.kl_divergence(zeros + 0.3, zeros - 0.2)) > 0)


def test_kl_per_unit_sums_to_kl():
    rng = np.random.default_rng(1)
    mean, log_var = rng.normal(size=(2, 6, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(losses.kl_per_unit(mean, log_var)).sum(-1),
        losses.kl_divergence(mean, log_var), rtol=1e-6,
    )


@pytest.mark.parametrize("logit", [-50.0, -10.0, 0.0, 10.0, 50.0])
@pytest.mark.parametrize("x", [0.0, 1.0, 0.3])
def test_bernoulli_nll_exact_at_extreme_logits(logit, x):
    logits = np.full((1, 2, 2, 1), logit, "float32")
    images = np.full((1, 2, 2, 1), x, "float32")
    value = float(np.asarray(losses.bernoulli_nll(images, logits))[0])
    # -[x log s(l) + (1-x) log(1-s(l))] with log s(l) = -log1p(exp(-l)), in float64.
    log_s = -np.logaddexp(0.0, -logit)
    log_1ms = -np.logaddexp(0.0, logit)
    expected = -4 * (x * log_s + (1 - x) * log_1ms)
    assert np.isfinite(value)
    np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-5)


def test_bernoulli_nll_matches_tf_and_has_finite_gradients():
    logits = tf.constant([[-50.0, 50.0, 0.5, -3.0]])
    x = tf.constant([[1.0, 0.0, 1.0, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = losses.bernoulli_nll(x, logits)
    expected = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(x, logits), -1)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    grad = tape.gradient(value, logits).numpy()
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, tf.sigmoid(logits) - x, atol=1e-6)


def test_gaussian_nll_includes_its_constant():
    x = np.array([[0.2, 0.7, 1.0]], "float32")
    mean = np.array([[0.1, 0.9, 0.5]], "float32")
    log_scale = np.float32(-1.3)
    sigma = np.exp(log_scale)
    expected = -np.sum(
        -0.5 * np.log(2 * np.pi * sigma**2) - (x - mean) ** 2 / (2 * sigma**2)
    )
    np.testing.assert_allclose(losses.gaussian_nll(x, mean, log_scale), [expected], rtol=1e-5)


def test_kl_weight_ramps_from_zero_to_beta():
    assert float(losses.kl_weight(0, 0.5, 0)) == 0.5
    values = [float(losses.kl_weight(s, 2.0, 100)) for s in (0, 25, 100, 1000)]
    assert values == [0.0, 0.5, 2.0, 2.0]
