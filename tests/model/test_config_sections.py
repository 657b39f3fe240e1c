"""The kind-specific config sections (`ModelConfig.density`, `ModelConfig.m2`) and the
configs written before they existed: every earlier `config.json` (a workdir's, an
export's, a saved model's) loads, resumes and exports as it did."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.config import ConfigError
from model import ModelConfig, build_model
from model.config import DensityConfig, M1M2Config, M2Config
from pipelines.config import RunConfig

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_configs"
# The fields that moved into a section, and where they are now.
MOVED = {"train_samples": "density", "prior": "density", "pseudo_inputs": "density", "stochastic_layers": "density",
         "alpha": "m2", "classifier": "m2", "classifier_shift": "m2"}


def flat(model: dict) -> dict:
    """A model section as configs were written before the sections: every field flat (the
    `m1m2` section, added since, must hold its defaults)."""
    assert model["m1m2"] == M1M2Config().to_dict()
    out = {k: v for k, v in model.items() if k not in ("density", "m2", "m1m2")}
    return {**out, **model["density"], **model["m2"]}


@pytest.mark.parametrize("name", sorted(p.stem for p in LEGACY.glob("*.json")))
def test_a_config_written_before_the_sections_loads_with_every_value_in_its_section(name):
    legacy = json.loads((LEGACY / f"{name}.json").read_text())
    config = RunConfig.from_dict(legacy)
    for field, section in MOVED.items():
        assert getattr(getattr(config.model, section), field) == legacy["model"][field], field
    assert flat(config.to_dict()["model"]) == legacy["model"]  # nothing else changed
    assert RunConfig.from_json(config.to_json()) == config


def test_old_spellings_of_moved_fields_still_override():
    config = RunConfig().override("model.kind=m2").override("model.alpha=30").override("model.classifier_shift=2")
    assert config.model.m2 == M2Config(alpha=30.0, classifier_shift=2)
    assert RunConfig().override('model.prior="gaussian"').model.density.prior == "gaussian"
    assert RunConfig().override("model.density.prior=gaussian") == RunConfig().override("model.prior=gaussian")


def test_an_old_and_a_new_spelling_that_disagree_are_refused():
    with pytest.raises(ConfigError, match="'prior' .* and 'density.prior' disagree"):
        ModelConfig.from_dict({"prior": "vamp", "density": {"prior": "gaussian"}})


def test_model_config_validates_the_sections_and_names_the_field():
    with pytest.raises(ConfigError, match="ModelConfig.density.pseudo_inputs must be a positive integer"):
        DensityConfig(pseudo_inputs=0)
    with pytest.raises(ConfigError, match="ModelConfig.m2.alpha must be >= 0"):
        M2Config(alpha=-1.0)
    with pytest.raises(ConfigError, match="ModelConfig.m2.alpha is only used by model.kind='m2'"):
        ModelConfig(m2=M2Config(alpha=1.0))


def rewrite_model_config(path: Path, rewrite) -> None:
    """Rewrites the `model_config` a `.keras` file's config.json holds."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    saved = json.loads(files["config.json"])
    saved["config"]["model_config"] = rewrite(saved["config"]["model_config"])
    files["config.json"] = json.dumps(saved).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("extra", [
    dict(density=DensityConfig(stochastic_layers=2, pseudo_inputs=5)),
    dict(kind="m2", m2=M2Config(alpha=3.0, classifier="conv", classifier_shift=1)),
])
def test_a_model_saved_with_a_flat_config_reloads(extra, tmp_path):
    from pipelines.train import load_saved_model

    model = build_model(ModelConfig(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(16,), conv_filters=(4,),
                                    num_classes=4, **extra), seed=0)
    model.build()
    model.save(tmp_path / "model.keras")
    rewrite_model_config(tmp_path / "model.keras", flat)
    loaded = load_saved_model(tmp_path / "model.keras")
    assert type(loaded) is type(model) and loaded.model_config == model.model_config
    images = (np.random.default_rng(0).random((4, 8, 8, 1)) < 0.5).astype("float32")
    np.testing.assert_allclose(loaded.reconstruct(images), model.reconstruct(images), atol=1e-6)


@pytest.mark.slow
def test_a_workdir_written_before_the_sections_resumes_and_exports(tfds_dir, tmp_path):
    from pipelines import cli

    workdir = tmp_path / "run"
    argv = ["train", "--workdir", str(workdir), "--kind", "m2", "--labelled-per-class", "10", "--latent-dim", "4",
            "--batch-size", "100", "model.hidden_units=[64]", "model.m2.classifier_shift=1",
            "train.steps_per_epoch=5", "train.iwae_k=2", "train.eval_examples=100", "train.tensorboard=false"]
    assert cli.main([*argv, "--epochs", "1"]) == 0
    for name in ("metrics.json", "model.keras"):  # as if killed after the first epoch's checkpoint
        (workdir / name).unlink()
    saved = json.loads((workdir / "config.json").read_text())
    (workdir / "config.json").write_text(json.dumps({**saved, "model": flat(saved["model"])}))
    assert cli.main([*argv, "--epochs", "2"]) == 0
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 10  # the first epoch's 5 steps kept, 5 more
    assert json.loads((workdir / "config.json").read_text())["model"]["m2"]["classifier_shift"] == 1
    assert (Path(metrics["export"]) / "saved_model.pb").is_file()
    assert cli.main(["export", "--workdir", str(workdir), "--model-base-path", str(tmp_path / "exports")]) == 0
    assert (tmp_path / "exports" / "1" / "saved_model.pb").is_file()
