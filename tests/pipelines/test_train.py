"""`vae train` on real Fashion-MNIST: learning, outputs, workdir rules and CLI errors."""

import json

import numpy as np
import pytest
from PIL import Image

from pipelines import cli, data
from pipelines.train import cli as train_cli
from pipelines.config import RunConfig
from pipelines.evaluate import evaluate
from pipelines.train import build_model, train
from pipelines.workdir import METRICS_FILE, WorkdirError

REQUIRED_METRICS = {"test_nelbo", "test_iwae_nll", "iwae_k", "train_images_per_second",
                    "epochs", "wall_seconds", "active_units"}


def small_config(tfds_dir, *overrides):
    config = RunConfig()
    for assignment in (
        f'data.data_dir="{tfds_dir}"', "model.latent_dim=2", "model.hidden_units=[256]",
        "train.epochs=2", "train.steps_per_epoch=100", "train.iwae_k=50",
        "train.eval_examples=1000", *overrides,
    ):
        config = config.override(assignment)
    return config


@pytest.fixture(scope="module")
def run(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = small_config(tfds_dir)
    metrics = train(config, workdir, verbose=0)
    return config, workdir, metrics


@pytest.mark.slow
def test_training_lowers_the_test_negative_elbo(run):
    config, workdir, metrics = run
    builder = data.get_builder(config.data)
    test_ds = data.evaluation_dataset(builder, config.data, "test", 500, binarize=True,
                                      seed=config.train.seed + 2, limit=1000)
    untrained = evaluate(build_model(config), test_ds, iwae_k=50, batch_size=500, verbose=False)
    assert untrained["test_nelbo"] > 500  # ~ 784 log 2 for a random decoder
    assert metrics["test_nelbo"] < 0.7 * untrained["test_nelbo"]
    assert metrics["test_iwae_nll"] <= metrics["test_nelbo"] + 0.5
    assert metrics["active_units"] == 2


@pytest.mark.slow
def test_outputs_are_written(run):
    config, workdir, metrics = run
    on_disk = json.loads((workdir / METRICS_FILE).read_text())
    assert REQUIRED_METRICS <= set(on_disk)
    assert on_disk["epochs"] == 2 and on_disk["iwae_k"] == 50
    assert on_disk["train_images_per_second"] > 0
    assert RunConfig.load(workdir / "config.json") == config
    assert (workdir / "model.keras").is_file() and not (workdir / "checkpoints").exists()
    assert on_disk["optimizer_steps"] == 200
    export = workdir / "exports" / "vae" / "1"
    assert on_disk["export"] == str(export) and (export / "saved_model.pb").is_file()
    assert json.loads((export / "assets.extra" / "metrics.json").read_text())["test_nelbo"] == \
        pytest.approx(on_disk["test_nelbo"])
    for name in ("samples.png", "reconstructions.png", "latent_scatter.png", "manifold.png"):
        with Image.open(workdir / name) as picture:
            picture.verify()
        with Image.open(workdir / name) as picture:
            assert picture.format == "PNG" and min(picture.size) >= 50
            assert np.asarray(picture).std() > 0  # not a blank picture


@pytest.mark.slow
def test_tensorboard_logs(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, workdir, _ = run
    events = EventAccumulator(str(workdir / "logs"))
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"loss", "reconstruction", "kl", "val_loss", "learning_rate", "kl_per_unit/000",
            "kl_per_unit/001", "samples"} <= tags
    assert len(events.Tensors("val_loss")) == 2  # one per epoch


@pytest.mark.slow
def test_finished_workdir_needs_overwrite(run):
    config, workdir, _ = run
    with pytest.raises(WorkdirError, match="--overwrite"):
        train(config, workdir, verbose=0)


@pytest.mark.slow
def test_time_budget_stops_training(tfds_dir, tmp_path):
    config = small_config(tfds_dir, "train.epochs=1000", "train.max_train_seconds=4",
                          "train.iwae_k=5", "train.eval_examples=200")
    metrics = train(config, tmp_path, verbose=0)
    assert metrics["train_seconds"] >= 4  # it stops only once the budget is spent
    assert 0 < metrics["optimizer_steps"] < 1000 * 100 and metrics["epochs"] < 1000
    history = json.loads((tmp_path / "history.json").read_text())["metrics"]
    assert len(history["loss"]) == metrics["epochs"] and np.isfinite(history["loss"]).all()


def test_a_budget_spent_before_the_first_step_logs_no_epoch(tfds_dir, tmp_path):
    """An epoch in which no step ran has no losses (not NaN ones)."""
    config = small_config(tfds_dir, "train.epochs=3", "train.max_train_seconds=1e-9",
                          "train.iwae_k=5", "train.eval_examples=200")
    metrics = train(config, tmp_path, verbose=0)
    assert (metrics["optimizer_steps"], metrics["epochs"]) == (0, 0)
    assert json.loads((tmp_path / "history.json").read_text())["metrics"] == {}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["model.latent_dim=0"], "ModelConfig.latent_dim must be a positive integer"),
        (["train.epochz=3"], "TrainConfig has no field 'epochz'"),
        (["--dataset", "fashion_mnistt"], "unknown dataset 'fashion_mnistt'"),
        (["--config", "/nonexistent/config.json"], "does not exist"),
    ],
)
def test_cli_errors_say_what_is_wrong(argv, message, tmp_path, tfds_dir, capsys):
    code = cli.main(["train", "--workdir", str(tmp_path / "w"), "--data-dir", tfds_dir, *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_flags_reach_the_config():
    args = cli.build_parser().parse_args(
        ["train", "--workdir", "w", "--epochs", "4", "--latent-dim", "2", "--download",
         "model.hidden_units=[64]"])
    config = train_cli.train_config(args)
    assert (config.train.epochs, config.model.latent_dim, config.data.download) == (4, 2, True)
    assert config.model.hidden_units == (64,)
