"""Small real searches on the Fashion-MNIST subset: ranking, reports, best config, export."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines.config import RunConfig
from pipelines.workdir import WorkdirError
from pipelines.tune import TuneSettings, tune
from pipelines.tune.settings import PROJECT, TRIAL_RECORD
from tests.pipelines.test_tune_space import TINY_SPACE, tiny_config, write_space

STEPS = 8  # train[:1024] in batches of 128


@pytest.fixture(scope="module")
def hyperband(tfds_dir, tmp_path_factory):
    """Hyperband, max 2 epochs, factor 2, capped at 3 trials: two 1-epoch trials, then
    the better one continued to 2 epochs."""
    root = tmp_path_factory.mktemp("tune")
    settings = TuneSettings(space=write_space(root, TINY_SPACE), max_epochs=2, hyperband_factor=2,
                            max_trials=3)
    config = tiny_config(tfds_dir)
    result = tune(config, root / "w", settings, verbose=0)
    return config, root / "w", result


def trials_of(workdir):
    return json.loads((workdir / "trials.json").read_text())["trials"]


def records_of(workdir):
    return {p.parent.name: json.loads(p.read_text())
            for p in sorted((workdir / PROJECT).glob(f"trial_*/{TRIAL_RECORD}"))}


@pytest.mark.slow
def test_trials_are_ranked_by_the_objective(hyperband):
    _, workdir, result = hyperband
    trials = trials_of(workdir)
    assert len(trials) == result["trials"] == 3
    assert [t["rank"] for t in trials] == [1, 2, 3]
    objectives = [t["objective"] for t in trials]
    # nats of a 1-2 epoch model of 1,024 images (the VampPrior's first epoch: about 610)
    assert objectives == sorted(objectives) and all(300 < v < 800 for v in objectives)
    assert result["best_trial"] == trials[0]["trial_id"] and result["best_value"] == objectives[0]
    assert all(t["status"] == "COMPLETED" and t["wall_seconds"] > 0 for t in trials)
    assert all(set(t["hyperparameters"]) == set(TINY_SPACE) for t in trials)
    with open(workdir / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == [t["trial_id"] for t in trials]
    assert {"rank", "val_loss", "wall_seconds", "model.latent_dim", "hidden_width"} <= set(rows[0])
    with Image.open(workdir / "objective.png") as picture:
        assert picture.format == "PNG" and np.asarray(picture).std() > 0


@pytest.mark.slow
def test_hyperband_continues_the_better_trial(hyperband):
    _, workdir, _ = hyperband
    trials = {t["trial_id"]: t for t in trials_of(workdir)}
    continued = [t for t in trials.values() if t["continues"] is not None]
    assert len(continued) == 1
    child = continued[0]
    parent = trials[child["continues"]]
    assert (parent["epochs"], child["epochs"]) == (1, 2)
    assert child["hyperparameters"] == parent["hyperparameters"]
    first_round = [t for t in trials.values() if t["continues"] is None]
    assert parent["objective"] == min(t["objective"] for t in first_round)
    record = records_of(workdir)[f"trial_{child['trial_id']}"]
    # It trained one more epoch from the parent's checkpoint, not two from scratch.
    assert record["result"]["optimizer_steps"] == 2 * STEPS
    assert child["objective"] < parent["objective"]
    assert all(r["attempts"] == 1 for r in records_of(workdir).values())
    assert not list((workdir / PROJECT).glob("trial_*/checkpoints"))  # removed at the end


@pytest.mark.slow
def test_best_config_is_a_train_config(hyperband):
    config, workdir, result = hyperband
    best = RunConfig.load(workdir / "best_config.json")
    trial_config = RunConfig.load(workdir / PROJECT / f"trial_{result['best_trial']}" / "config.json")
    assert best == trial_config
    values = result["best_hyperparameters"]
    assert best.model.latent_dim == values["model.latent_dim"]
    assert best.model.hidden_units == (values["hidden_width"],)
    assert best.train.learning_rate == pytest.approx(values["train.learning_rate"])
    assert best.data == config.data  # everything outside the space is the base config


@pytest.mark.slow
def test_best_model_is_exported_and_answers(hyperband):
    _, workdir, result = hyperband
    export = workdir / "exports" / "vae" / "1"
    assert result["export"] == str(export)
    metrics = json.loads((workdir / "best" / "metrics.json").read_text())
    assert metrics["tuning"]["best_trial"] == result["best_trial"]
    assert metrics["test_iwae_nll"] <= metrics["test_nelbo"] + 0.5
    served = json.loads((export / "assets.extra" / "config.json").read_text())
    assert RunConfig.from_dict(served) == RunConfig.load(workdir / "best_config.json")
    loaded = tf.saved_model.load(str(export))
    latent = result["best_hyperparameters"]["model.latent_dim"]
    images = np.full((3, 28, 28, 1), 0.5, np.float32)
    codes = loaded.signatures["encode"](images=tf.constant(images))
    assert codes["z_mean"].shape == (3, latent) and codes["z_log_var"].shape == (3, latent)
    samples = loaded.signatures["generate"](num_samples=tf.constant(4, tf.int32),
                                            seed=tf.constant([1, 2], tf.int64),
                                            temperature=tf.constant(1.0))
    assert samples["images"].shape == (4, 28, 28, 1) and samples["z"].shape == (4, latent)
    pixels = samples["images"].numpy()
    assert 0 <= pixels.min() and pixels.max() <= 1 and pixels.std() > 0


@pytest.mark.slow
def test_a_finished_search_needs_overwrite(hyperband):
    config, workdir, _ = hyperband
    settings = TuneSettings(space=str(workdir.parent / "space.json"), max_epochs=2,
                            hyperband_factor=2, max_trials=3)
    with pytest.raises(WorkdirError, match="finished search"):
        tune(config, workdir, settings, verbose=0)


@pytest.mark.slow
def test_bayesian_iwae_objective_retrain_and_overwrite(tfds_dir, tmp_path):
    """Bayesian optimisation on the IWAE objective, the best configuration retrained,
    in a workdir holding an old finished search: --overwrite starts anew, keeps exports."""
    workdir = tmp_path / "w"
    (workdir / "exports" / "vae" / "7").mkdir(parents=True)  # served from an earlier search
    (workdir / "tune_result.json").write_text("{}")
    settings = TuneSettings(space=write_space(tmp_path, TINY_SPACE), tuner="bayesian",
                            objective="iwae_nll", iwae_k=10, max_trials=2, max_epochs=1,
                            retrain=True)
    result = tune(tiny_config(tfds_dir), workdir, settings, overwrite=True, verbose=0)
    trials = trials_of(workdir)
    assert len(trials) == 2 and all(t["iwae_nll"] == t["objective"] for t in trials)
    assert all(t["iwae_nll"] <= t["val_loss"] + 1.0 for t in trials)  # IWAE bound is tighter
    assert result["objective"] == "iwae_nll" and result["model_from"] == "retrained"
    assert result["export"] == str(workdir / "exports" / "vae" / "8")
    assert (workdir / "exports" / "vae" / "7").is_dir()
    assert not (workdir / "best" / "checkpoints").exists()


def test_reopening_does_not_rerun_a_trial_the_oracle_saved_as_ongoing(tmp_path):
    """keras-tuner's chief saves oracle.json before it drops a finished trial from its
    ongoing trials; reopening the search must not send that trial back for a retry."""
    from pipelines.tune.space import SearchSpace
    from pipelines.tune.tuner import VAETuner, make_oracle

    config = RunConfig()
    settings = TuneSettings(tuner="random", max_trials=3)
    space = SearchSpace(TINY_SPACE, config)

    def open_tuner():
        return VAETuner(make_oracle(settings, space, seed=0), space=space, base_config=config,
                        settings=settings, directory=str(tmp_path), project_name=PROJECT)

    tuner = open_tuner()
    trial = tuner.oracle.create_trial("tuner0")
    tuner.oracle.update_trial(trial.trial_id, {"val_loss": 400.0})
    trial.status = "COMPLETED"
    tuner.oracle.end_trial(trial)
    tuner.save()
    oracle_file = tmp_path / PROJECT / "oracle.json"
    state = json.loads(oracle_file.read_text())
    state["ongoing_trials"] = {"tuner0": trial.trial_id}  # as the chief leaves it
    oracle_file.write_text(json.dumps(state))

    reopened = open_tuner()
    assert reopened.oracle.trials[trial.trial_id].status == "COMPLETED"
    assert reopened.oracle._retry_queue == []
    assert reopened.oracle.create_trial("tuner0").trial_id != trial.trial_id


def test_an_m2_base_tunes_with_the_default_space(tfds_dir, tmp_path):
    """The default space leaves out what M2 lacks (VampPrior, two layers, IWAE training)
    instead of refusing the search; the trial trains an M2 and reports its objective."""
    settings = TuneSettings(tuner="random", max_trials=1, max_epochs=1)
    config = tiny_config(tfds_dir, 'model.kind="m2"', "data.labelled_per_class=5")
    tune(config, tmp_path / "w", settings, verbose=0)
    (trial,) = trials_of(tmp_path / "w")
    assert np.isfinite(trial["objective"])
    assert "model.density.prior" not in trial["hyperparameters"]
    assert "model.density.train_samples" not in trial["hyperparameters"]
    best = RunConfig.from_dict(json.loads((tmp_path / "w" / "best_config.json").read_text()))
    assert best.model.kind == "m2"
