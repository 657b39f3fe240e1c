"""The registry of kinds (`model.kinds`): which class a config builds, what each model
declares it serves, and that every class reloads from a `.keras` file."""

import re

import keras
import numpy as np
import pytest

from model import CVAE, M2, VAE, ConfigError, HierarchicalVAE, ModelConfig, build_model
from model import kinds
from model.config import CONDITIONS, DensityConfig, M2Config
from model.kinds import REGISTRY
from tests.helpers import with_density

SMALL = dict(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(16,), num_classes=4,
             density=DensityConfig(pseudo_inputs=5))

# (config overrides, the class built, takes_labels, classifies, completes)
CASES = [
    (dict(kind="vae"), VAE, False, False, False),
    (dict(kind="vae", density=DensityConfig(stochastic_layers=2, pseudo_inputs=5)), HierarchicalVAE, False, False,
     False),
    (dict(kind="cvae", condition="label"), CVAE, True, False, False),
    (dict(kind="cvae", condition="top_half"), CVAE, False, False, True),
    (dict(kind="m2", m2=M2Config(alpha=1.0)), M2, True, True, False),
]


def test_every_registered_class_is_a_vae_and_the_parser_offers_every_kind():
    from pipelines.cli import build_parser

    for kind in REGISTRY.values():
        assert all(issubclass(kind.model_class(layers), VAE) for layers in kind.classes)
    kind_flag = build_parser()._subparsers._group_actions[0].choices["train"]._option_string_actions["--kind"]
    assert tuple(kind_flag.choices) == tuple(REGISTRY)


@pytest.mark.parametrize("extra, field, message", [
    (dict(kind="gan"), "kind", "must be one of ('vae', 'cvae', 'm2'"),
    (dict(kind="cvae", density=DensityConfig(prior="vamp")), "density.prior",
     "must be one of ('gaussian',) or null for model.kind='cvae'"),
    (dict(kind="m2", density=DensityConfig(stochastic_layers=2)), "density.stochastic_layers",
     "must be one of (1,) for model.kind='m2'"),
    (dict(kind="m2", density=DensityConfig(train_samples=5)), "density.train_samples", "must be 1 for model.kind='m2'"),
    (dict(kind="vae", m2=M2Config(classifier_shift=1)), "m2.classifier_shift", "is only used by model.kind='m2'"),
    (dict(kind="vae", condition="top_half"), "condition", "must be 'label' for model.kind='vae'"),
])
def test_a_config_is_checked_against_what_its_kind_declares(extra, field, message):
    with pytest.raises(ConfigError, match=f"ModelConfig.{field} " + message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**{**SMALL, **extra})


def test_a_kind_registered_from_outside_is_built_and_its_name_is_refused_twice():
    class Wide(VAE):
        pass

    kinds.register("wide_test_kind", kinds.Kind(summary="test", classes={1: Wide}))
    try:
        config = ModelConfig(**SMALL, kind="wide_test_kind")
        assert type(build_model(config, seed=0)) is Wide and config.prior_name == "gaussian"
        with pytest.raises(ValueError, match="already registered"):
            kinds.register("wide_test_kind", kinds.Kind(summary="again", classes={1: Wide}))
    finally:
        del REGISTRY["wide_test_kind"]


@pytest.mark.parametrize("extra, cls, takes_labels, classifies, completes", CASES)
def test_a_config_builds_its_kinds_class_which_declares_what_it_serves(extra, cls, takes_labels,
                                                                       classifies, completes):
    model = build_model(ModelConfig(**{**SMALL, **extra}), seed=0)
    assert type(model) is cls
    assert (model.takes_labels, model.classifies, model.completes) == (takes_labels, classifies, completes)
    assert model.num_classes == (4 if takes_labels else None)


def test_every_half_condition_completes_and_the_label_takes_labels():
    for condition in CONDITIONS:
        model = build_model(ModelConfig(**SMALL, kind="cvae", condition=condition), seed=0)
        assert model.takes_labels == (condition == "label") and model.completes == (condition != "label")


def test_a_class_refuses_a_config_it_does_not_build():
    with pytest.raises(ConfigError, match="stochastic_layers=2 is not built by VAE"):
        VAE(ModelConfig(**with_density(SMALL, stochastic_layers=2)), seed=0)
    with pytest.raises(ConfigError, match="stochastic_layers=1 is not built by HierarchicalVAE"):
        HierarchicalVAE(ModelConfig(**SMALL), seed=0)


def test_a_two_layer_model_saved_by_model_save_reloads(tmp_path):
    model = build_model({**ModelConfig(**with_density(SMALL, stochastic_layers=2)).to_dict()}, seed=0)
    model.build()
    images = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert type(loaded) is HierarchicalVAE and loaded.model_config == model.model_config
    np.testing.assert_allclose(loaded.reconstruct(images), model.reconstruct(images), atol=1e-6)


@pytest.mark.parametrize("extra, weight", [
    (dict(kind="cvae", condition="label"), 4.0),  # the kind's default on a label (Kind.betas)
    (dict(kind="cvae", condition="left_half"), 1.0),
    (dict(kind="vae"), 1.0),
    (dict(kind="m2", m2=M2Config(alpha=1.0)), 1.0),
    (dict(kind="cvae", condition="label", beta=2.0), 2.0),  # a set beta wins
    (dict(kind="cvae", condition="label", beta=1.0), 1.0),  # as configs written before the default say
])
def test_the_training_kl_weight_is_the_kinds_beta_for_its_condition_unless_beta_is_set(extra, weight):
    config = ModelConfig(**{**SMALL, **extra})
    model = build_model(config, seed=0)
    images = (np.random.default_rng(0).random((6, 8, 8, 1)) > 0.5).astype("float32")
    labels = np.array([0, 1, 2, 3, 0, 1])
    outputs = model((images, labels), training=True, seed=np.array([1, 2]))
    assert config.kl_beta == weight
    np.testing.assert_allclose(float(sum(model.losses)), weight * float(np.mean(outputs["kl"])), rtol=1e-5)
