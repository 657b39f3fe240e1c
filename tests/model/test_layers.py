"""Sampling, the likelihood layers and the networks: behaviour and serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import (
    BernoulliLikelihood,
    ConvDecoder,
    ConvEncoder,
    GaussianLikelihood,
    MLPDecoder,
    MLPEncoder,
    Sampling,
)
from tests.helpers import assert_config_round_trip, assert_save_load_round_trip


def test_sampling_matches_mean_and_variance():
    n = 100_000
    mean = np.tile(np.array([[1.5, -2.0, 0.0]], "float32"), (n, 1))
    log_var = np.tile(np.log(np.array([[0.25, 4.0, 1.0]], "float32")), (n, 1))
    z = np.asarray(Sampling(seed=3)([mean, log_var]))
    np.testing.assert_allclose(z.mean(0), [1.5, -2.0, 0.0], atol=0.02)
    np.testing.assert_allclose(z.var(0), [0.25, 4.0, 1.0], rtol=0.02)


def test_sampling_is_seeded_and_draws_fresh_noise_each_call():
    zeros = np.zeros((4, 3), "float32")
    a, b = Sampling(seed=7), Sampling(seed=7)
    first = np.asarray(a([zeros, zeros]))
    np.testing.assert_array_equal(first, np.asarray(b([zeros, zeros])))
    assert not np.allclose(first, np.asarray(a([zeros, zeros])))


def test_gradients_reach_both_encoder_outputs():
    mean = tf.Variable(np.ones((8, 2), "float32"))
    log_var = tf.Variable(np.zeros((8, 2), "float32"))
    with tf.GradientTape() as tape:
        z = Sampling(seed=0)([mean, log_var])
        loss = tf.reduce_sum(z**2)
    grad_mean, grad_log_var = tape.gradient(loss, [mean, log_var])
    assert np.all(np.abs(grad_mean.numpy()) > 0)
    assert np.any(np.abs(grad_log_var.numpy()) > 0)


def test_likelihood_means():
    logits = np.array([[-2.0, 0.0, 3.0]], "float32")
    np.testing.assert_allclose(BernoulliLikelihood().mean(logits), 1 / (1 + np.exp(-logits)), rtol=1e-6)
    np.testing.assert_array_equal(GaussianLikelihood().mean(logits), logits)


def test_gaussian_scale_is_learned_or_fixed():
    assert len(GaussianLikelihood(learn_scale=True).trainable_weights) == 1
    fixed = GaussianLikelihood(log_scale=-1.0, learn_scale=False)
    assert not fixed.trainable_weights
    assert float(fixed.log_scale) == -1.0


@pytest.mark.parametrize("shape", [(28, 28, 1), (33, 17, 3), (8, 8, 2)])
def test_conv_networks_fit_any_image_shape(shape):
    images = np.random.default_rng(0).random((2, *shape)).astype("float32")
    z_mean, z_log_var = ConvEncoder(5, (8, 16), (32,))(images)
    assert z_mean.shape == (2, 5) and z_log_var.shape == (2, 5)
    assert ConvDecoder(shape, (8, 16), (32,))(z_mean).shape == (2, *shape)


LAYERS = {
    "sampling": (lambda: Sampling(seed=4), lambda r: [r.random((3, 2)), r.random((3, 2))]),
    "bernoulli": (lambda: BernoulliLikelihood(), lambda r: r.random((3, 4, 4, 1))),
    "gaussian": (lambda: GaussianLikelihood(-0.5, False), lambda r: r.random((3, 4, 4, 1))),
    "mlp_encoder": (lambda: MLPEncoder(3, (16, 8), "tanh"), lambda r: r.random((3, 6, 5, 2))),
    "mlp_decoder": (lambda: MLPDecoder((6, 5, 2), (16, 8)), lambda r: r.random((3, 4))),
    "conv_encoder": (lambda: ConvEncoder(3, (4, 8), (16,), 5), lambda r: r.random((3, 9, 7, 1))),
    "conv_decoder": (lambda: ConvDecoder((9, 7, 1), (4, 8), (16,), 5), lambda r: r.random((3, 3))),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_config_and_save_load_round_trip(name, tmp_path):
    make, inputs = LAYERS[name]
    rng = np.random.default_rng(0)
    data = inputs(rng)
    data = [np.asarray(d, "float32") for d in data] if isinstance(data, list) else np.asarray(data, "float32")
    layer = make()
    assert_config_round_trip(layer)
    if name == "sampling":
        # Random by design: the round trip must restore the config, and the layer must
        # still draw with its seed after reloading.
        return
    assert_save_load_round_trip(layer, data, tmp_path)


def test_sampling_draws_its_seeded_sequence_again_after_reload(tmp_path):
    zeros = [np.zeros((3, 2), "float32"), np.zeros((3, 2), "float32")]
    inputs = [keras.Input((2,)), keras.Input((2,))]
    model = keras.Model(inputs, Sampling(seed=4)(inputs))
    first, second = model(zeros).numpy(), model(zeros).numpy()
    assert not np.allclose(first, second)  # it keeps drawing: each call is a new draw
    model.save(tmp_path / "sampling.keras")
    reloaded = keras.models.load_model(tmp_path / "sampling.keras")
    # The reloaded layer draws from its seed again: the same sequence, call after call.
    np.testing.assert_array_equal(reloaded(zeros).numpy(), first)
    np.testing.assert_array_equal(reloaded(zeros).numpy(), second)
    other = keras.Model(inputs, Sampling(seed=5)(inputs))
    assert not np.allclose(other(zeros).numpy(), first)


def test_sampling_with_a_seed_tensor_is_stateless():
    layer = Sampling(seed=4)
    mean, log_var = np.ones((3, 2), "float32"), np.full((3, 2), -1.0, "float32")
    seed = tf.constant([7, 1], tf.int64)
    once, again = layer([mean, log_var], seed=seed), layer([mean, log_var], seed=seed)
    np.testing.assert_array_equal(once, again)
    eps = tf.random.stateless_normal((3, 2), seed)
    np.testing.assert_allclose(once, mean + np.exp(0.5 * log_var) * eps, rtol=1e-6)
