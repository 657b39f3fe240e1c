"""The command line a user meets: help and defaults of every option, the old spellings of
renamed and removed flags, `--version`, `-v` after the subcommand, `--print-config`, and
where model selection validates (never on the test split). Parsing only: no TensorFlow,
except the one test that reads the dataset's splits."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from core.config import ConfigError
from pipelines.cli import build_parser, main
from pipelines.config import DataConfig, RunConfig, resolve_config, splits_overlap

ROOT = Path(__file__).resolve().parents[1]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def visible_options():
    """(subcommand, action) of every option and positional --help lists."""
    for name, sub in subcommands().items():
        for action in sub._actions:
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                yield name, sub, action


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def public(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "func"}


# === Help ===
def test_every_option_of_every_subcommand_has_help_text():
    missing = [f"vae {name} {'/'.join(a.option_strings) or a.dest}"
               for name, _, a in visible_options() if not (a.help or "").strip()]
    assert missing == []


def test_every_option_shows_its_default_unless_it_is_required_or_a_switch():
    """A default shows as argparse's "(default: X)" or is stated in the help text (a field
    of the run config: "default 10, train.epochs")."""
    silent = []
    for name, sub, action in visible_options():
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        alternative = any(action in group._group_actions for group in sub._mutually_exclusive_groups)
        if (action.required or (switch and action.default in (False, argparse.SUPPRESS))
                or not action.option_strings or alternative):  # an input kind: its group says
            continue
        shown = sub._get_formatter()._expand_help(action)
        if "default" not in shown:
            silent.append(f"vae {name} {action.option_strings[-1]}: {shown}")
    assert silent == []


def test_a_config_default_in_a_help_text_is_the_dataclass_default():
    epochs = next(a for n, _, a in visible_options() if n == "train" and "--epochs" in a.option_strings)
    assert f"default {RunConfig().train.epochs}, train.epochs" in epochs.help


def test_every_subcommand_has_an_examples_epilog_of_real_commands():
    for name, sub in subcommands().items():
        assert sub.epilog and "Examples:" in sub.epilog, name
        commands = [line.strip().split("#")[0] for line in sub.epilog.splitlines()
                    if line.strip().startswith(f"vae {name} ")]
        assert commands, name
        for command in commands:  # each example parses (a continued line is skipped)
            if not command.rstrip().endswith("\\"):
                build_parser().parse_args(command.split()[1:])


def test_export_help_lists_the_signatures_of_every_kind():
    from serving import contract as C

    text = subcommands()["export"].format_help()
    for served in (C.PLAIN_KIND, C.LABEL_KIND, C.HALF_KIND, C.M2_KIND):
        assert f"served kind {served}" in text
        for signature in C.signatures_for(served):
            assert signature in text


def test_serve_help_names_grpc_and_rest():
    text = " ".join(subcommands()["serve"].format_help().split())
    assert "gRPC API" in text and "--rest-api-port, TF Serving's REST API" in text


# === Old spellings ===
RENAMED = [  # (old argv, new argv): the same parse, one warning line
    (["encode", "--model", "e/vae", "--npy", "x.npy", "--output-dir", "o"],
     ["encode", "--model-base-path", "e/vae", "--npy", "x.npy", "--output-dir", "o"]),
    (["encode", "--model-base-path", "e/vae", "--npy", "x.npy", "--out", "o"],
     ["encode", "--model-base-path", "e/vae", "--npy", "x.npy", "--output-dir", "o"]),
    (["encode", "--model-base-path", "e", "--npy", "x.npy", "--output-dir", "o", "--labels", "y.npy"],
     ["encode", "--model-base-path", "e", "--npy", "x.npy", "--output-dir", "o", "--labels-file", "y.npy"]),
    (["train", "--workdir", "w", "--npy", "x.npy", "--labels", "y.npy"],
     ["train", "--workdir", "w", "--npy", "x.npy", "--labels-file", "y.npy"]),
    (["tune", "--workdir", "w", "--npy", "x.npy", "--labels", "y.npy"],
     ["tune", "--workdir", "w", "--npy", "x.npy", "--labels-file", "y.npy"]),
    (["generate", "--out", "g.png"], ["generate", "--output", "g.png"]),
]


@pytest.mark.parametrize("old, new", RENAMED, ids=lambda argv: " ".join(argv[:1]))
def test_an_old_spelling_parses_as_the_new_flag_and_warns_once(old, new, capsys):
    assert public(parse(*old)) == public(parse(*new))
    err = capsys.readouterr().err.splitlines()
    renamed = [a for a in old if a not in new]
    assert err == [f"vae: warning: {renamed[0]} is deprecated; use {[a for a in new if a not in old][0]}"]


def test_an_old_spelling_given_twice_warns_once(capsys):
    parse("train", "--workdir", "w", "--npy", "x.npy", "--labels", "a.npy", "--labels", "b.npy")
    assert capsys.readouterr().err.count("deprecated") == 1


def test_old_spellings_stay_out_of_the_help():
    for name, old in (("export", "--base-dir"), ("export", "--model-name"), ("encode", "--model "),
                      ("encode", "--out "), ("train", "--labels "), ("tune", "--labels "),
                      ("generate", "--out "), ("train", "--checkpoint-every-steps"), ("train", "--jit")):
        assert old not in subcommands()[name].format_help() + " ", (name, old)


def test_the_required_new_flag_is_satisfied_by_its_old_spelling(capsys):
    args = parse("encode", "--model", "e/vae", "--out", "o", "--npy", "x.npy")
    assert (args.model_base_path, args.output_dir) == ("e/vae", "o")
    assert capsys.readouterr().err.count("deprecated") == 2


def test_export_base_dir_and_model_name_become_the_model_base_path(capsys):
    from pipelines.train.cli import export_destination

    old = parse("export", "--workdir", "w", "--base-dir", "exports", "--model-name", "faces")
    assert "--base-dir is deprecated; use --model-base-path BASE_DIR/MODEL_NAME" in capsys.readouterr().err
    assert export_destination(old) == ("exports", "faces")
    assert export_destination(parse("export", "--workdir", "w", "--model-base-path", "exports/faces")) == (
        "exports", "faces")
    assert export_destination(parse("export", "--workdir", "w", "--base-dir", "exports")) == ("exports", None)
    with pytest.raises(SystemExit):  # one of the two
        parse("export", "--workdir", "w")


@pytest.mark.parametrize("flag, value, field, expected", [
    ("--checkpoint-every-steps", "100", "checkpoint_every_steps", 100),
    ("--steps-per-epoch", "7", "steps_per_epoch", 7),
    ("--early-stopping-patience", "3", "early_stopping_patience", 3),
    ("--jit", None, "jit", True),
])
def test_a_removed_train_flag_works_as_its_override_and_warns(flag, value, field, expected, capsys):
    from pipelines.train.cli import train_config

    args = parse("train", "--workdir", "w", flag, *([value] if value else []))
    assert getattr(train_config(args).train, field) == expected
    assert capsys.readouterr().err.strip() == (
        f"vae: warning: {flag} is deprecated; use train.{field}={json.dumps(expected)}")


def test_a_user_override_still_wins_over_a_removed_flag(capsys):
    from pipelines.train.cli import train_config

    args = parse("train", "--workdir", "w", "--checkpoint-every-steps", "100", "train.checkpoint_every_steps=5")
    assert train_config(args).train.checkpoint_every_steps == 5


# === --version, -v ===
def test_vae_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"vae {version('vae-system')}"


@pytest.mark.parametrize("argv, verbose", [
    (["train", "--workdir", "w"], False),
    (["-v", "train", "--workdir", "w"], True),
    (["train", "-v", "--workdir", "w"], True),
    (["serve", "--model-base-path", "e", "--verbose"], True),
    (["generate", "-v"], True),
])
def test_verbose_is_accepted_before_and_after_the_subcommand(argv, verbose):
    assert parse(*argv).verbose is verbose


# === Installed names ===
def test_our_four_packages_come_from_this_installation():
    from pipelines.cli import check_own_packages

    assert check_own_packages() == []


def test_vae_names_a_package_of_another_distribution_that_shadows_ours(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "__init__.py").write_text("")  # e.g. another project's `model`
    done = subprocess.run([sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())",
                           "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # tmp_path is first on sys.path
    assert done.returncode == 1 and f"'model' from {tmp_path / 'model'} shadows" in done.stderr


# === --print-config ===
def run_vae(*argv: str) -> subprocess.CompletedProcess:
    code = ("import sys; from pipelines.cli import main; code = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'; sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_train_print_config_layers_flags_and_overrides_without_tensorflow(tmp_path):
    base = RunConfig().override("model.latent_dim=5").override("train.epochs=7")
    (tmp_path / "base.json").write_text(base.to_json())
    done = run_vae("train", "--workdir", str(tmp_path / "w"), "--config", str(tmp_path / "base.json"),
                   "--epochs", "3", "--kind", "cvae", "train.seed=5", "--print-config")
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert (config["train"]["epochs"], config["train"]["seed"]) == (3, 5)  # flag over file; override
    assert (config["model"]["latent_dim"], config["model"]["kind"]) == (5, "cvae")  # from the file; flag
    assert not (tmp_path / "w").exists()  # nothing trained, no workdir made


def test_tune_print_config_takes_the_kind_flags():
    done = run_vae("tune", "--workdir", "w", "--kind", "m2", "--labelled-per-class", "10",
                   "model.latent_dim=4", "--print-config")
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert (config["model"]["kind"], config["data"]["labelled_per_class"], config["model"]["latent_dim"]) == (
        "m2", 10, 4)


def test_tune_kind_cvae_parses():  # the README's command, refused before
    from pipelines.tune.cli import tune_config

    assert tune_config(parse("tune", "--workdir", "w", "--kind", "cvae")).model.kind == "cvae"


# === generate --version / --version-label ===
def test_generate_takes_a_version_or_a_version_label_not_both():
    assert (parse("generate", "--version", "3").version, parse("generate", "--version", "3").version_label) == (3, None)
    assert parse("generate", "--version-label", "stable").version_label == "stable"
    with pytest.raises(SystemExit):
        parse("generate", "--version", "3", "--version-label", "stable")


# === Validation never on the test split ===
def test_the_default_validation_split_is_held_out_of_training_and_not_the_test_split():
    data = DataConfig()
    assert not splits_overlap(data.validation_split, data.test_split)
    assert not splits_overlap(data.validation_split, data.train_split)
    assert data.train_split.startswith("train[") and data.validation_split.startswith("train[")


@pytest.mark.parametrize("first, second, overlap", [
    ("test", "test", True), ("train[90%:]", "test", False), ("train[:90%]", "train[90%:]", False),
    ("train", "train[90%:]", True), ("train[:95%]", "train[90%:]", True), ("test[:50%]", "test[50%:]", False),
    ("train[:5000]", "train[90%:]", True),  # different units: cannot tell, so assumed to overlap
    ("train+test", "test[:10]", True),
])
def test_split_overlap_is_decided_conservatively(first, second, overlap):
    assert splits_overlap(first, second) is overlap


def test_early_stopping_on_the_test_split_is_refused_naming_the_fields():
    with pytest.raises(ConfigError) as refused:
        resolve_config(None, ['data.validation_split="test"', "train.early_stopping_patience=3"])
    for field in ("data.validation_split", "data.test_split", "train.early_stopping_patience"):
        assert field in str(refused.value)
    # Without early stopping the validation loss is only reported: allowed, as before.
    assert resolve_config(None, ['data.validation_split="test"']).data.validation_split == "test"
    # Own data is split by seed: the tfds split names do not apply.
    own = ['data.source="npy"', 'data.paths=["x.npy"]', 'data.validation_split="test"',
           "train.early_stopping_patience=3"]
    assert resolve_config(None, own).train.early_stopping_patience == 3


def test_vae_train_and_tune_refuse_selection_on_the_test_split_with_exit_code_2():
    train = run_vae("train", "--workdir", "w", "--early-stopping-patience", "2", 'data.validation_split=test',
                    "--print-config")
    assert train.returncode == 2 and "data.validation_split='test' shares images with data.test_split" in train.stderr
    tune = run_vae("tune", "--workdir", "w", "data.validation_split=test", "--print-config")
    assert tune.returncode == 2 and "vae tune selects the best trial on it" in tune.stderr


def test_the_default_validation_images_are_training_images_not_test_images(tfds_dir):
    """On the prepared Fashion-MNIST: every default validation example is read from the
    train split's files, none is a test example, and 54,000 images remain for training."""
    import tensorflow_datasets as tfds

    from pipelines import data as D

    config = DataConfig.from_dict({"data_dir": tfds_dir})
    builder = D.get_builder(config)

    def ids(split: str) -> set[str]:
        ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()},
                                read_config=tfds.ReadConfig(add_tfds_id=True))
        return {tfds_id.decode() for tfds_id in ds.map(lambda ex: ex["tfds_id"]).as_numpy_iterator()}

    validation, test = ids(config.validation_split), ids(config.test_split)
    assert (len(validation), len(test)) == (6_000, 10_000) and not validation & test
    assert all("-train." in i for i in validation) and all("-test." in i for i in test)
    assert D.num_examples(builder, config.train_split) == 54_000  # of the 60,000 training images
