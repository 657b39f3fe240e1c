"""The run folder: the resume check, history.json, and `vae export` of a finished run."""

import json

import numpy as np
import pytest
import tensorflow as tf

from pipelines import cli
from pipelines.config import RunConfig
from pipelines.train import export_run
from pipelines.workdir import History, WorkdirError, differences, prepare
from serving import contract as C
from tests.serving.serving_testlib import METRICS, RUN_CONFIG, build_vae


def test_differences_name_each_changed_field_and_skip_the_allowed_ones():
    old = {"model": {"latent_dim": 8, "beta": 1.0}, "train": {"epochs": 3}}
    new = {"model": {"latent_dim": 2, "beta": 1.0}, "train": {"epochs": 9}}
    assert differences(old, new) == "model.latent_dim: 8 -> 2; train.epochs: 3 -> 9"
    assert differences(old, new, frozenset({"train.epochs"})) == "model.latent_dim: 8 -> 2"
    assert differences(old, old) == ""


def test_prepare_refuses_a_finished_run_and_an_unfinished_run_of_another_config(tmp_path):
    config = RunConfig()
    prepare(tmp_path, config, overwrite=False)
    assert RunConfig.load(tmp_path / "config.json") == config
    (tmp_path / "checkpoints").mkdir()
    prepare(tmp_path, config.override("train.epochs=50"), overwrite=False)  # epochs may change
    with pytest.raises(WorkdirError, match="model.latent_dim: 16 -> 4"):
        prepare(tmp_path, config.override("model.latent_dim=4"), overwrite=False)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(WorkdirError, match="--overwrite"):
        prepare(tmp_path, config, overwrite=False)
    prepare(tmp_path, config, overwrite=True)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoints").exists()


def test_history_json_round_trips_one_format(tmp_path):
    history = History(epochs=[{"loss": 3.0, "val_loss": 2.5}, {"loss": 2.0, "val_loss": 2.25}],
                      epoch_seconds=[1.5, 1.25], completed_epochs=4, train_seconds=2.75)
    history.save(tmp_path)
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["metrics"] == {"loss": [3.0, 2.0], "val_loss": [2.5, 2.25]}
    assert History.load(tmp_path) == history
    assert History.load(tmp_path / "nowhere") is None


def test_export_run_carries_config_and_metrics(tmp_path):
    images = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    trained = build_vae(seed=3)
    workdir = tmp_path / "run"
    workdir.mkdir()
    trained.save(workdir / "model.keras")
    (workdir / C.CONFIG_FILE).write_text(json.dumps(RUN_CONFIG))
    (workdir / C.METRICS_FILE).write_text(json.dumps(METRICS))
    path = export_run(workdir, tmp_path / "exports", C.MODEL_NAME)
    assert path == tmp_path / "exports" / C.MODEL_NAME / "1"
    assert json.loads((path / C.ASSETS_EXTRA / C.METRICS_FILE).read_text()) == METRICS
    assert json.loads((path / C.ASSETS_EXTRA / C.CONFIG_FILE).read_text()) == RUN_CONFIG
    reloaded = tf.saved_model.load(str(path))
    out = reloaded.signatures[C.RECONSTRUCT](**{C.IMAGES: tf.constant(images)})
    np.testing.assert_allclose(out[C.IMAGES].numpy(), trained.reconstruct(images), atol=1e-5)
    with pytest.raises(WorkdirError, match="no trained model"):
        export_run(tmp_path / "missing", tmp_path / "exports")
    # `vae export` takes the model name from the run's config and the next version.
    assert cli.main(["export", "--workdir", str(workdir), "--base-dir", str(tmp_path / "exports")]) == 0
    assert (tmp_path / "exports" / "vae" / "2" / C.SAVED_MODEL_FILE).is_file()
    assert cli.main(["export", "--workdir", str(workdir), "--base-dir", str(tmp_path / "exports"),
                     "--version", "2"]) == 2  # taken


def test_vae_export_answers_2_for_a_workdir_without_a_model(tmp_path, capsys):
    assert cli.main(["export", "--workdir", str(tmp_path), "--base-dir", str(tmp_path / "e")]) == 2
    assert "no trained model" in capsys.readouterr().err
