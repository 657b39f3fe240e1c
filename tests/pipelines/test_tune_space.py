"""`vae tune` without training: search-space files, settings, workdir rules and the CLI."""

import argparse
import json

import pytest

from core.config import ConfigError
from pipelines import cli
from pipelines.tune import cli as tune_cli
from pipelines.config import RunConfig
from pipelines.workdir import WorkdirError
from pipelines.tune import SearchSpace, TuneSettings, tune
from pipelines.tune.settings import PROJECT, RESULT

# A tiny search: seconds per trial on 2 CPU cores.
TINY_SPACE = {
    "model.latent_dim": {"type": "choice", "values": [2, 4, 8]},
    "train.learning_rate": {"type": "float", "min": 5e-4, "max": 5e-3, "sampling": "log"},
    "hidden_width": {"type": "int", "min": 32, "max": 96, "step": 32},
}
TINY_OVERRIDES = (
    'data.train_split="train[:1024]"', 'data.validation_split="train[1024:1280]"',
    "train.eval_examples=256", "train.eval_batch_size=256", "train.iwae_k=20",
    "model.hidden_units=[64]", "train.tensorboard=false",
)


def tiny_config(tfds_dir, *overrides) -> RunConfig:
    config = RunConfig().override(f'data.data_dir="{tfds_dir}"')
    for assignment in (*TINY_OVERRIDES, *overrides):
        config = config.override(assignment)
    return config


def write_space(tmp_path, space, name="space.json"):
    path = tmp_path / name
    path.write_text(json.dumps(space) if not isinstance(space, str) else space)
    return str(path)


def test_default_space_ships_with_the_package_and_is_valid():
    space = SearchSpace.load(None, RunConfig())
    assert {"model.architecture", "model.latent_dim", "hidden_width", "hidden_depth",
            "train.learning_rate", "model.beta", "model.kl_warmup_steps",
            "train.batch_size"} <= set(space.names)
    hp = space.hyperparameters()
    lr = hp.get("train.learning_rate")
    assert hp._hps["train.learning_rate"][0].sampling == "log" and 0 < lr < 1


@pytest.mark.parametrize("kind, left_out", [
    ("vae", set()),
    ("cvae", {"model.density.prior", "model.density.pseudo_inputs", "model.density.stochastic_layers"}),
    ("m2", {"model.density.prior", "model.density.pseudo_inputs", "model.density.stochastic_layers", "model.density.train_samples",
            "train.iwae_start_fraction"}),
])
def test_the_default_space_searches_only_what_the_base_kind_has(kind, left_out):
    vae_names = set(SearchSpace.load(None, RunConfig()).names)
    base = RunConfig().override(f'model.kind="{kind}"')
    space = SearchSpace.load(None, base)
    assert set(space.names) == vae_names - left_out
    config = space.apply(base, space.hyperparameters().values)  # the defaults make a valid config
    assert config.model.kind == kind


def test_a_condition_on_a_base_field_keeps_or_drops_the_entry_and_its_children():
    space = {
        "model.density.prior": {"type": "choice", "values": ["gaussian", "vamp"], "when": {"model.kind": ["vae"]}},
        "model.density.pseudo_inputs": {"type": "int", "min": 25, "max": 50, "when": {"model.density.prior": ["vamp"]}},
        "train.batch_size": {"type": "choice", "values": [64, 128], "when": {"model.hidden_units": [[512, 256]]}},
    }
    vae = SearchSpace(space, RunConfig())
    assert vae.names == ["model.density.prior", "model.density.pseudo_inputs", "train.batch_size"]
    assert all(e.when is None for e in vae.entries if e.name != "model.density.pseudo_inputs")
    hp = vae.hyperparameters()
    hp.values["model.density.prior"] = "gaussian"
    assert not hp.is_active("model.density.pseudo_inputs")
    cvae = SearchSpace({**space, "model.latent_dim": {"type": "int", "min": 8, "max": 16}},
                       RunConfig().override('model.kind="cvae"').override("model.hidden_units=[256]"))
    assert cvae.names == ["model.latent_dim"]  # the prior, its child and the batch size left out
    with pytest.raises(ConfigError, match="no hyperparameters to search: every entry's"):
        SearchSpace({"model.density.prior": space["model.density.prior"]}, RunConfig().override('model.kind="cvae"'))


def test_a_space_file_may_name_a_field_by_its_name_before_the_sections():
    old = {"model.prior": {"type": "choice", "values": ["gaussian", "vamp"]},
           "model.pseudo_inputs": {"type": "int", "min": 25, "max": 50, "when": {"model.prior": ["vamp"]}}}
    space = SearchSpace(old, RunConfig())
    assert space.names == ["model.density.prior", "model.density.pseudo_inputs"]
    assert space.entries[1].when == ("model.density.prior", ("vamp",))
    config = space.apply(RunConfig(), {"model.density.prior": "vamp", "model.density.pseudo_inputs": 30})
    assert (config.model.density.prior, config.model.density.pseudo_inputs) == ("vamp", 30)


def test_values_land_on_the_run_config():
    base = RunConfig()
    space = SearchSpace.load(None, base)
    config = space.apply(base, {"model.architecture": "conv", "conv_filters_base": 16,
                                "conv_depth": 3, "hidden_width": 128, "train.batch_size": 64,
                                "model.beta": 0.5, "tuner/epochs": 3})
    assert config.model.architecture == "conv"
    assert config.model.conv_filters == (16, 32, 64)
    assert config.model.hidden_units == (128, 128)  # width x the base config's depth
    assert (config.train.batch_size, config.model.beta) == (64, 0.5)
    assert config.train.epochs == base.train.epochs  # tuner/* values are the tuner's


def test_list_choices_and_conditions():
    space = SearchSpace({
        "model.architecture": {"type": "choice", "values": ["mlp", "conv"]},
        "model.hidden_units": {"type": "choice", "values": [[256], [512, 256]],
                               "when": {"model.architecture": ["mlp"]}},
    }, RunConfig())
    hp = space.hyperparameters()
    hp.values["model.architecture"] = "conv"
    assert not hp.is_active("model.hidden_units")
    hp.values["model.architecture"] = "mlp"
    assert hp.is_active("model.hidden_units")
    config = space.apply(RunConfig(), {"model.architecture": "mlp", "model.hidden_units": "[512, 256]"})
    assert config.model.hidden_units == (512, 256)
    assert space.decoded({"model.architecture": "conv"}) == {"model.architecture": "conv",
                                                             "model.hidden_units": None}


def test_values_are_checked_in_a_context_that_can_accept_them():
    no_dense = {"type": "choice", "values": [[], [32]]}  # [] is fine for conv, not for mlp
    base = RunConfig()
    for architecture in ({"type": "fixed", "value": "conv"},
                         {"type": "choice", "values": ["mlp", "conv"]}):
        space = SearchSpace({"model.hidden_units": no_dense, "model.architecture": architecture}, base)
        config = space.apply(base, {"model.hidden_units": "[]", "model.architecture": "conv"})
        assert (config.model.architecture, config.model.hidden_units) == ("conv", ())
    with pytest.raises(ConfigError, match="entry 'model.hidden_units': value \\[\\] is invalid"):
        SearchSpace({"model.hidden_units": no_dense,
                     "model.architecture": {"type": "fixed", "value": "mlp"}}, base)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"model.latnt_dim": {"type": "int", "min": 2, "max": 8}},
         "entry 'model.latnt_dim': unknown hyperparameter"),
        ({"dropout": {"type": "float", "min": 0.1, "max": 0.5}}, "entry 'dropout': unknown hyperparameter"),
        ({"model.latent_dim": {"type": "choice", "values": []}}, "entry 'model.latent_dim': empty range"),
        ({"train.learning_rate": {"type": "float", "min": 1e-3, "max": 1e-3}},
         "entry 'train.learning_rate': empty range"),
        ({"model.latent_dim": {"type": "int", "min": 32, "max": 8}},
         "entry 'model.latent_dim': min > max (32 > 8)"),
        ({"model.latent_dim": {"type": "float", "min": 2, "max": 8}}, "entry 'model.latent_dim': wrong type"),
        ({"model.latent_dim": {"type": "int", "min": 2.5, "max": 8}}, "entry 'model.latent_dim': wrong type"),
        ({"train.batch_size": {"type": "choice", "values": [64, "128"]}},
         "entry 'train.batch_size': wrong type: value '128' is not an integer"),
        ({"model.architecture": {"type": "choice", "values": ["mlp", 3]}},
         "entry 'model.architecture': wrong type"),
        ({"model.architecture": {"type": "choice", "values": ["mlp", "transformer"]}},
         "entry 'model.architecture': value 'transformer' is invalid: ModelConfig.architecture must be one of"),
        ({"model.architecture": {"type": "choice", "values": ["mlp", "conv"]},
          "conv_depth": {"type": "int", "min": 2, "max": 3, "when": {"model.architecture": ["cnn"]}}},
         "entry 'conv_depth': \"when\" value 'cnn' is not a value of 'model.architecture'"),
        ({"model.latent_dim": {"type": "int", "min": 8, "max": 16, "when": {"model.density.stochastic_layers": ["2"]}}},
         "entry 'model.latent_dim': \"when\" value '2' has the wrong type for the config field 'model.density.stochastic_layers'"),
        ({"model.latent_dim": {"type": "int", "min": 8, "max": 16, "when": {"model.depth": [2]}}},
         "entry 'model.latent_dim': \"when\" names 'model.depth', which is neither an entry"),
        ({"model.latent_dim": {"type": "int", "min": 0, "max": 8}},
         "entry 'model.latent_dim': value 0 is invalid: ModelConfig.latent_dim must be a positive integer"),
        ({"model.latent_dim": {"type": "int", "mn": 2, "max": 8}}, "entry 'model.latent_dim': unknown key(s) ['mn']"),
        ({"model.latent_dim": {"type": "range", "min": 2, "max": 8}}, "entry 'model.latent_dim': \"type\" must be"),
        ({"model.latent_dim": [2, 4]}, "entry 'model.latent_dim': must be an object"),
        ({"train.epochs": {"type": "int", "min": 1, "max": 5}}, "entry 'train.epochs': cannot be tuned"),
        ({"data.binarize": {"type": "bool"}}, "entry 'data.binarize': cannot be tuned"),
        ({"model.kl_warmup_steps": {"type": "int", "min": 0, "max": 100, "sampling": "log"}},
         "entry 'model.kl_warmup_steps': For HyperParameters.Int"),
        ({"hidden_width": {"type": "int", "min": 32, "max": 64},
          "model.hidden_units": {"type": "choice", "values": [[64]]}}, "entry 'hidden_width': conflicts"),
        ({}, "no hyperparameters"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not valid JSON"),
    ],
    ids=["unknown", "unknown-derived", "empty-choice", "empty-range", "min>max", "float-for-int",
         "int-bound-not-int", "choice-wrong-type", "choice-wrong-type-str", "unknown-choice-value",
         "unknown-condition-value", "base-condition-wrong-type", "unknown-condition-parent", "value-rejected", "unknown-key", "unknown-type", "not-object",
         "not-tunable", "data-not-tunable", "log-from-zero", "conflict", "empty", "not-a-mapping", "bad-json"],
)
def test_bad_space_files_name_the_entry(space, message, tmp_path):
    with pytest.raises(ConfigError) as caught:
        SearchSpace.load(write_space(tmp_path, space), RunConfig())
    assert message in str(caught.value)
    assert "space.json" in str(caught.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        SearchSpace.load(tmp_path / "nope.json", RunConfig())


def test_bad_space_fails_before_any_trial(tmp_path):
    bad = write_space(tmp_path, {"model.latent_dim": {"type": "int", "min": 8, "max": 2}})
    workdir = tmp_path / "w"
    with pytest.raises(ConfigError, match="min > max"):
        tune(RunConfig(), workdir, TuneSettings(space=bad), verbose=0)
    assert not workdir.exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"tuner": "grid"}, "TuneSettings.tuner must be one of"),
    ({"objective": "loss"}, "TuneSettings.objective must be one of"),
    ({"max_epochs": 0}, "max_epochs must be >= 1"),
    ({"max_trials": 0}, "max_trials must be >= 1"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TuneSettings(**kwargs)


def test_default_trial_limits():
    assert TuneSettings().trial_limit is None  # one Hyperband iteration
    assert TuneSettings(tuner="random").trial_limit == 20
    assert TuneSettings(tuner="bayesian", max_trials=5).trial_limit == 5


def test_workdir_rules(tmp_path):
    space = write_space(tmp_path, TINY_SPACE)
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / RESULT).write_text("{}")
    with pytest.raises(WorkdirError, match="finished search.*--overwrite"):
        tune(RunConfig(), finished, TuneSettings(space=space), verbose=0)
    foreign = tmp_path / "foreign"
    (foreign / PROJECT).mkdir(parents=True)
    (foreign / PROJECT / "oracle.json").write_text("{}")
    with pytest.raises(WorkdirError, match="--overwrite"):
        tune(RunConfig(), foreign, TuneSettings(space=space), verbose=0)


def test_multiworker_training_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="KERASTUNER_TUNER_ID"):
        tune(RunConfig().override("train.strategy=multiworker"), tmp_path / "w", verbose=0)


def parse(argv):
    parser = argparse.ArgumentParser(prog="vae")
    tune_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["tune", *argv])


def test_cli_flags_reach_settings_and_config():
    args = parse(["--workdir", "w", "--tuner", "bayesian", "--max-trials", "7", "--max-epochs", "3",
                  "--objective", "iwae_nll", "--iwae-k", "50", "--retrain", "--data-dir", "/d",
                  "model.latent_dim=4"])
    settings = tune_cli.tune_settings(args)
    assert (settings.tuner, settings.max_trials, settings.max_epochs, settings.objective,
            settings.iwae_k, settings.retrain) == ("bayesian", 7, 3, "iwae_nll", 50, True)
    config = tune_cli.tune_config(args)
    assert (config.model.latent_dim, config.data.source.data_dir) == (4, "/d")
    # The search validates on data held out of the training split, never on the test split.
    assert (config.data.train_split, config.data.validation_split) == ("train[:90%]", "train[90%:]")
    assert args.func is tune_cli.run_tune


def test_cli_bad_input_raises_config_error(tmp_path, capsys):
    bad = write_space(tmp_path, {"model.latent_dim": {"type": "choice", "values": []}})
    args = parse(["--workdir", str(tmp_path / "w"), "--space", bad])
    with pytest.raises(ConfigError, match="empty range"):
        args.func(args)
    assert cli.main(["tune", "--workdir", str(tmp_path / "w"), "--space", bad]) == 2
    assert "entry 'model.latent_dim': empty range" in capsys.readouterr().err
    assert cli.main(["tune", "--workdir", str(tmp_path / "w"), "model.latent_dim=0"]) == 2


def test_distributed_tuning_needs_all_three_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.delenv("KERASTUNER_ORACLE_PORT", raising=False)
    monkeypatch.delenv("KERASTUNER_TUNER_ID", raising=False)
    with pytest.raises(ConfigError, match="KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID"):
        tune(RunConfig(), tmp_path / "w", verbose=0)
