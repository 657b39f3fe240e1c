"""Config validation, JSON round-trip and dotted overrides."""

import subprocess
import sys

import pytest

from model import ConfigError, ModelConfig
from pipelines.config import DataConfig, RunConfig, TrainConfig, resolve_config


def test_json_round_trip():
    config = RunConfig(model=ModelConfig(latent_dim=2, hidden_units=(64, 32), architecture="conv"))
    assert RunConfig.from_json(config.to_json()) == config


def test_file_then_overrides(tmp_path):
    path = tmp_path / "config.json"
    RunConfig(train=TrainConfig(epochs=7)).save(path)
    config = resolve_config(str(path), ["model.hidden_units=[64,32]", "model.likelihood=gaussian",
                                        "data.binarize=false", "model.conv_filters=8,16"])
    assert config.train.epochs == 7
    assert config.model.hidden_units == (64, 32)
    assert config.model.conv_filters == (8, 16)
    assert config.model.likelihood == "gaussian" and config.data.binarize is False
    assert not config.binarize


def test_binarize_defaults_to_the_likelihood():
    assert RunConfig().binarize
    assert not RunConfig(model=ModelConfig(likelihood="gaussian")).binarize


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: ModelConfig(latent_dim=0), "ModelConfig.latent_dim"),
        (lambda: ModelConfig(architecture="transformer"), "ModelConfig.architecture"),
        (lambda: ModelConfig(likelihood="poisson"), "ModelConfig.likelihood"),
        (lambda: ModelConfig(image_shape=(28, 28)), "ModelConfig.image_shape"),
        (lambda: ModelConfig(beta=-1.0), "ModelConfig.beta"),
        (lambda: ModelConfig(hidden_units=()), "ModelConfig.hidden_units"),
        (lambda: TrainConfig(epochs=0), "TrainConfig.epochs"),
        (lambda: TrainConfig(learning_rate=0.0), "TrainConfig.learning_rate"),
        (lambda: DataConfig(shuffle_buffer=0), "DataConfig.shuffle_buffer"),
        (lambda: RunConfig().override("model.latent_dim=two"), "ModelConfig.latent_dim"),
        (lambda: RunConfig().override("model.width=3"), "'width'"),
        (lambda: RunConfig().override("latent_dim"), "section.field=value"),
        (lambda: RunConfig.from_dict({"model": {"latent": 2}}), "['latent']"),
    ],
)
def test_bad_configs_name_the_field(make, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        make()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.load(tmp_path / "nope.json")


def test_the_vae_parser_loads_without_the_model_package():
    # Building the whole `vae` parser (what `vae --help` and `vae encode` pay before they
    # run) must not load `model/` (only its Keras-free `model.config` and the registry of
    # kinds, `model.kinds`, which names its classes by import path), the training code,
    # TensorFlow or Keras.
    code = (
        "import sys\n"
        "from pipelines.cli import build_parser\n"
        "build_parser()\n"
        "loaded = [m for m in sys.modules if m.startswith(('model.', 'pipelines.train.', 'tensorflow', 'keras')) and m not in ('model.config', 'model.kinds', 'pipelines.train.cli')]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
