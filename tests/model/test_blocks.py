"""The MLP's hidden blocks (dense, gated, residual) and the decoder's output bias."""

import keras
import numpy as np
import pytest

from model import VAE, ModelConfig
from model.config import ConfigError
from model.networks import GatedDense, MLPDecoder, MLPEncoder, ResidualDense
from tests.helpers import assert_config_round_trip, assert_save_load_round_trip


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_gated_dense_is_the_feature_times_the_sigmoid_gate():
    x = np.random.default_rng(0).normal(size=(5, 7)).astype("float32")
    layer = GatedDense(4, activation="tanh")
    y = np.asarray(layer(x))
    feature = np.tanh(x @ layer.feature.kernel.numpy() + layer.feature.bias.numpy())
    gate = sigmoid(x @ layer.gate.kernel.numpy() + layer.gate.bias.numpy())
    assert y.shape == (5, 4)
    np.testing.assert_allclose(y, feature * gate, rtol=1e-5, atol=1e-6)


def test_residual_dense_adds_a_correction_to_its_projection():
    x = np.random.default_rng(1).normal(size=(3, 6)).astype("float32")
    layer = ResidualDense(5)
    y = np.asarray(layer(x))
    h = np.maximum(x @ layer.project.kernel.numpy() + layer.project.bias.numpy(), 0)
    expected = h + np.maximum(h @ layer.residual.kernel.numpy() + layer.residual.bias.numpy(), 0)
    assert y.shape == (3, 5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", [GatedDense(8), GatedDense(8, activation="relu"), ResidualDense(8)])
def test_blocks_round_trip_config_and_save_load(layer, tmp_path):
    assert_config_round_trip(layer)
    x = np.random.default_rng(2).normal(size=(4, 3)).astype("float32")
    assert_save_load_round_trip(layer, x, tmp_path)


@pytest.mark.parametrize("block", ["gated", "residual"])
def test_mlp_networks_of_each_block_have_the_right_shapes_and_round_trip(block, tmp_path):
    images = np.random.default_rng(3).random((4, 8, 8, 1)).astype("float32")
    encoder = MLPEncoder(3, (32, 16), block=block)
    z_mean, z_log_var = encoder(images)
    assert z_mean.shape == (4, 3) and z_log_var.shape == (4, 3)
    assert all(type(layer).__name__ == {"gated": "GatedDense", "residual": "ResidualDense"}[block]
               for layer in encoder.hidden)
    decoder = MLPDecoder((8, 8, 1), (32, 16), block=block)
    assert decoder(z_mean).shape == (4, 8, 8, 1)
    for network in (encoder, decoder):
        assert_config_round_trip(network)
    assert_save_load_round_trip(decoder, np.asarray(z_mean), tmp_path)


def test_a_gated_vae_saves_and_reloads_with_identical_outputs(tmp_path):
    vae = VAE(ModelConfig(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(16, 16), block="gated"), seed=0)
    vae.build()
    images = (np.random.default_rng(4).random((4, 8, 8, 1)) < 0.5).astype("float32")
    path = tmp_path / "gated.keras"
    vae.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.model_config.block == "gated"
    np.testing.assert_array_equal(np.asarray(vae.encode(images)[0]), np.asarray(loaded.encode(images)[0]))
    z = np.zeros((2, 3), "float32")
    np.testing.assert_array_equal(np.asarray(vae.decode(z)), np.asarray(loaded.decode(z)))


def test_a_saved_network_without_a_block_entry_loads_as_dense():
    config = MLPEncoder(3, (16,)).get_config()
    del config["block"]  # as written before blocks existed
    assert MLPEncoder.from_config(config).block == "dense"


def test_block_must_be_known_and_dense_for_conv():
    with pytest.raises(ConfigError, match="block"):
        ModelConfig(block="highway")
    with pytest.raises(ConfigError, match="block"):
        ModelConfig(architecture="conv", block="gated")


def test_set_output_bias_puts_one_value_per_pixel_in_the_decoder_output():
    decoder = MLPDecoder((4, 4, 1), (8,))
    decoder(np.zeros((1, 2), "float32"))
    bias = np.linspace(-3, 3, 16, dtype="float32").reshape(4, 4, 1)
    decoder.set_output_bias(bias)
    # With zero weights into the output layer, the logits are the bias, pixel for pixel.
    decoder.out.kernel.assign(np.zeros(decoder.out.kernel.shape, "float32"))
    np.testing.assert_allclose(np.asarray(decoder(np.ones((2, 2), "float32"))),
                               np.broadcast_to(bias, (2, 4, 4, 1)), rtol=1e-6)
