"""`register` builds the `vae encode` subcommand: flags to EncodeConfig, usage errors."""

from __future__ import annotations

import argparse

import pytest

from pipelines.encode import cli as encode_cli
from pipelines.encode import EncodeError
from pipelines.encode.beam import pipeline_options
from tests.pipelines.encode_fixtures import run, tiny_export

__all__ = ["tiny_export"]  # a fixture


def parse(*argv):
    parser = argparse.ArgumentParser(prog="vae")
    subparsers = parser.add_subparsers(dest="command", required=True)
    subparsers.add_parser("train")  # beside the other subcommands of `vae`
    encode_cli.register(subparsers)
    return parser.parse_args(["encode", *argv])


def test_flags_become_the_job_config():
    args = parse("--model", "exports/vae", "--dataset", "fashion_mnist", "--split", "train[:10%]",
                 "--out", "codes", "--rows-per-shard", "500", "--log-likelihood", "--format", "tfrecord",
                 "--runner", "beam", "--beam-option", "direct_num_workers=2", "--",
                 "--direct_running_mode=multi_processing")
    assert args.func is encode_cli.run_encode
    config = encode_cli.config_from_args(args)
    assert (config.source.kind, config.source.dataset, config.source.split) == ("tfds", "fashion_mnist", "train[:10%]")
    assert (config.rows_per_shard, config.log_likelihood, config.output_format) == (500, True, "tfrecord")
    assert config.beam_args == ("--direct_num_workers=2", "--direct_running_mode=multi_processing")
    options = pipeline_options(config.beam_args).get_all_options()
    assert options["direct_num_workers"] == 2 and options["runner"] == "FnApiRunner"
    assert pipeline_options(["--runner=DataflowRunner"]).get_all_options()["runner"] == "DataflowRunner"

    config = encode_cli.config_from_args(parse("--model", "m", "--npy", "a.npy", "b*.npy", "--out", "o"))
    assert (config.source.kind, config.source.paths, config.runner) == ("npy", ("a.npy", "b*.npy"), "local")
    config = encode_cli.config_from_args(parse("--model", "m", "--tfrecord", "r", "--label-feature", "",
                                               "--out", "o"))
    assert config.source.label_feature is None and config.source.image_feature == "image"


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "fashion_mnist"], "--dataset needs --split"),
    (["--npy", "x.npy", "--split", "test"], "--split goes with --dataset"),
    (["--npy", "x.npy", "--", "--runner=DataflowRunner"], "need --runner beam"),
    (["--npy", "x.npy", "--runner", "beam", "--beam-option", "novalue"], "KEY=VALUE"),
    (["--npy", "x.npy", "--batch-size", "5000"], "--batch-size must be within [1, 1024]"),
    (["--npy", "x.npy", "--rows-per-shard", "0"], "--rows-per-shard must be >= 1"),
])
def test_usage_errors_name_the_flag(argv, message):
    with pytest.raises(EncodeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        encode_cli.config_from_args(parse("--model", "m", "--out", "o", *argv))


def test_exactly_one_input(capsys):
    with pytest.raises(SystemExit):
        parse("--model", "m", "--out", "o", "--npy", "x.npy", "--images", "dir")
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--model", "m", "--out", "o")
    assert "one of the arguments --dataset --images --npy --tfrecord is required" in capsys.readouterr().err


def test_missing_export_and_inputs_fail_cleanly(tiny_export, tmp_path, capsys):
    tiny_export_dir = tiny_export[0]
    assert run(["--model", tmp_path / "nowhere", "--npy", "x.npy", "--out", tmp_path / "o"]) == 2
    error = capsys.readouterr().err
    assert "--model" in error and "does not exist" in error
    (tmp_path / "empty").mkdir()
    assert run(["--model", tmp_path / "empty", "--npy", "x.npy", "--out", tmp_path / "o"]) == 2
    assert "holds no SavedModel" in capsys.readouterr().err
    assert run(["--model", tiny_export_dir, "--npy", tmp_path / "missing.npy", "--out", tmp_path / "o"]) == 2
    assert "--npy file" in capsys.readouterr().err
    assert run(["--model", tiny_export_dir, "--images", tmp_path / "empty", "--out", tmp_path / "o"]) == 2
    assert "holds no .png/.jpg/.jpeg files" in capsys.readouterr().err
    assert run(["--model", tiny_export_dir, "--dataset", "no_such_dataset", "--split", "test",
                "--out", tmp_path / "o"]) == 2
    assert "unknown dataset 'no_such_dataset'" in capsys.readouterr().err

