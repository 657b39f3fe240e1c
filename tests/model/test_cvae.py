"""The conditional VAE: its terms against NumPy, the conditions, generation, save/load."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import CVAE, ConfigError, HalfCondition, ModelConfig
from model.config import HALF_CONDITIONS, M2Config
from model.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from tests.helpers import assert_config_round_trip
from tests.model import numpy_reference as ref

SMALL = dict(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(32, 16), conv_filters=(4, 8),
             num_classes=4)


def batch(n=12, seed=0):
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 8, 8, 1)) < 0.5).astype("float32")
    return images, (np.arange(n) % 4).astype("int64")


def cvae(condition="label", architecture="mlp", **extra):
    model = CVAE(ModelConfig(kind="cvae", condition=condition, architecture=architecture, **SMALL, **extra),
                 seed=0)
    model.build()
    return model


def test_label_cvae_terms_equal_a_numpy_computation_of_the_conditional_elbo():
    model = cvae("label")
    images, labels = batch()
    outputs = model((images, labels), seed=tf.constant([1, 2], tf.int64))
    terms = model.terms_of((images, labels), outputs)
    c = ref.one_hot(labels, 4)
    mu, log_var = ref.mlp_encoder(model.encoder, images, c)
    np.testing.assert_allclose(outputs["z_mean"], mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(terms["kl"], ref.kl_to_standard_normal(mu, log_var), rtol=1e-4, atol=1e-5)
    expected = ref.bernoulli_nll(images, ref.mlp_decoder(model.decoder, np.asarray(outputs["z"]), c))
    np.testing.assert_allclose(terms["reconstruction"], expected, rtol=1e-4)
    np.testing.assert_allclose(terms["loss"], terms["reconstruction"])
    # The KL is the add_loss term: its batch mean (KL weight 1 outside training).
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), np.mean(terms["kl"]), rtol=1e-5)


def test_left_half_cvae_models_the_right_half_given_the_left_one():
    model = cvae("left_half")
    images, labels = batch()
    outputs = model((images, labels), seed=tf.constant([3, 4], tf.int64))
    terms = model.terms_of((images, labels), outputs)
    x, c = images[:, :, 4:], images[:, :, :4].reshape(len(images), -1)  # (B, 8, 4, 1), (B, 32)
    assert model.x_shape == (8, 4, 1) and model.decoder.image_shape == (8, 4, 1)
    mu, log_var = ref.mlp_encoder(model.encoder, x, c)
    np.testing.assert_allclose(terms["kl"], ref.kl_to_standard_normal(mu, log_var), rtol=1e-4, atol=1e-5)
    expected = ref.bernoulli_nll(x, ref.mlp_decoder(model.decoder, np.asarray(outputs["z"]), c))
    np.testing.assert_allclose(terms["reconstruction"], expected, rtol=1e-4)


@pytest.mark.parametrize("side", HALF_CONDITIONS)
def test_a_half_condition_splits_and_reassembles_the_image(side):
    images = np.random.default_rng(0).random((2, 6, 8, 1)).astype("float32")
    half = HalfCondition((6, 8, 1), side)
    x, c = half.split(images)
    np.testing.assert_array_equal(half.assemble(images, x), images)
    assert x.shape[1:] == half.x_shape and c.shape == (2, half.dim)
    observed = {"left_half": images[:, :, :4], "right_half": images[:, :, 4:],
                "top_half": images[:, :3], "bottom_half": images[:, 3:]}[side]
    np.testing.assert_array_equal(np.asarray(c), observed.reshape(2, -1))


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_the_label_changes_what_the_decoder_generates(architecture):
    model = cvae("label", architecture)
    a = np.asarray(model.generate([0, 0], seed=5))
    b = np.asarray(model.generate([1, 1], seed=5))
    np.testing.assert_array_equal(a, np.asarray(model.generate([0, 0], seed=5)))  # same seed, same draw
    assert a.shape == (2, 8, 8, 1) and not np.allclose(a, b)  # same z, another class


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_completion_keeps_the_observed_half_and_draws_the_other(architecture):
    model = cvae("top_half", architecture)
    images, _ = batch(4)
    completed = np.asarray(model.complete(images, seed=1))
    np.testing.assert_array_equal(completed[:, :4], images[:, :4])
    assert not np.allclose(completed[:, 4:], images[:, 4:])  # an untrained model cannot copy
    assert completed.min() >= 0 and completed.max() <= 1
    with pytest.raises(ValueError, match="label-conditioned"):
        model.generate([0])


def test_conditional_iwae_is_a_tighter_bound_than_the_elbo():
    model = cvae("label")
    images, labels = batch(8)
    nelbo = np.mean([np.asarray(model.negative_elbo(images, seed=s, labels=labels)) for s in range(20)], 0)
    nll = -np.asarray(model.log_likelihood(images, num_samples=200, seed=0, labels=labels))
    assert np.all(nll <= nelbo + 0.5)
    with pytest.raises(ValueError, match="needs the labels"):
        model.log_likelihood(images, num_samples=2)


@pytest.mark.parametrize("condition, architecture", [("label", "mlp"), ("label", "conv"),
                                                     ("right_half", "mlp"), ("bottom_half", "conv")])
def test_save_load_round_trip(condition, architecture, tmp_path):
    model = cvae(condition, architecture)
    images, labels = batch(6)
    path = tmp_path / "cvae.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is CVAE and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.negative_elbo(images, seed=3, labels=labels),
                                  model.negative_elbo(images, seed=3, labels=labels))
    np.testing.assert_array_equal(loaded.sample(4, seed=2), model.sample(4, seed=2))


@pytest.mark.parametrize("layer", [
    MLPEncoder(3, (16,), condition_dim=10), MLPDecoder((8, 4, 1), (16,), condition_dim=32),
    ConvEncoder(3, (4, 8), (16,), condition_dim=10), ConvDecoder((8, 4, 1), (4, 8), condition_dim=32),
])
def test_conditional_networks_config_round_trip(layer):
    assert_config_round_trip(layer)
    assert layer.get_config()["condition_dim"] > 0


def test_keras_fit_trains_a_cvae_on_dict_batches():
    model = cvae("label")
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    images, labels = batch(256)
    data = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(64)
    history = model.fit(data, epochs=3, verbose=0, shuffle=False).history
    assert set(history) == {"loss", "reconstruction", "kl"}
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("fields, field", [
    (dict(condition="left_half"), "ModelConfig.condition"),
    (dict(kind="m2", condition="left_half"), "ModelConfig.condition"),
    (dict(kind="cvae", condition="middle"), "ModelConfig.condition"),
    (dict(kind="gan"), "ModelConfig.kind"),
    (dict(kind="cvae", m2=M2Config(alpha=1.0)), "ModelConfig.m2.alpha"),
    (dict(kind="cvae", num_classes=1), "ModelConfig.num_classes"),
])
def test_bad_kind_settings_name_the_field(fields, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**fields)
