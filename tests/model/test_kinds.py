"""The registry of kinds (`model.kinds`): which class a config builds, what each model
declares it serves, and that every class reloads from a `.keras` file."""

import keras
import numpy as np
import pytest

from model import CVAE, M2, VAE, ConfigError, HierarchicalVAE, ModelConfig, build_model
from model.config import CONDITIONS, KINDS
from model.kinds import REGISTRY

SMALL = dict(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(16,), num_classes=4, pseudo_inputs=5)

# (config overrides, the class built, takes_labels, classifies, completes)
CASES = [
    (dict(kind="vae"), VAE, False, False, False),
    (dict(kind="vae", stochastic_layers=2), HierarchicalVAE, False, False, False),
    (dict(kind="cvae", condition="label"), CVAE, True, False, False),
    (dict(kind="cvae", condition="top_half"), CVAE, False, False, True),
    (dict(kind="m2", alpha=1.0), M2, True, True, False),
]


def test_the_registry_has_every_kind_of_the_config():
    assert set(REGISTRY) == set(KINDS)


@pytest.mark.parametrize("extra, cls, takes_labels, classifies, completes", CASES)
def test_a_config_builds_its_kinds_class_which_declares_what_it_serves(extra, cls, takes_labels,
                                                                       classifies, completes):
    model = build_model(ModelConfig(**SMALL, **extra), seed=0)
    assert type(model) is cls
    assert (model.takes_labels, model.classifies, model.completes) == (takes_labels, classifies, completes)
    assert model.num_classes == (4 if takes_labels else None)


def test_every_half_condition_completes_and_the_label_takes_labels():
    for condition in CONDITIONS:
        model = build_model(ModelConfig(**SMALL, kind="cvae", condition=condition), seed=0)
        assert model.takes_labels == (condition == "label") and model.completes == (condition != "label")


def test_a_class_refuses_a_config_it_does_not_build():
    with pytest.raises(ConfigError, match="stochastic_layers=2 is not built by VAE"):
        VAE(ModelConfig(**SMALL, stochastic_layers=2), seed=0)
    with pytest.raises(ConfigError, match="stochastic_layers=1 is not built by HierarchicalVAE"):
        HierarchicalVAE(ModelConfig(**SMALL), seed=0)


def test_a_two_layer_model_saved_by_model_save_reloads(tmp_path):
    model = build_model({**ModelConfig(**SMALL, stochastic_layers=2).to_dict()}, seed=0)
    model.build()
    images = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert type(loaded) is HierarchicalVAE and loaded.model_config == model.model_config
    np.testing.assert_allclose(loaded.reconstruct(images), model.reconstruct(images), atol=1e-6)
