"""One source spec: the run config's `data` section and the encode job hold a `SourceSpec`,
built from the same flags; config.json keeps the data section's flat fields."""

from __future__ import annotations

import json

import pytest

from core.config import ConfigError
from pipelines.cli import build_parser
from pipelines.config import DataConfig, RunConfig, resolve_config
from pipelines.encode.cli import config_from_args
from pipelines.sources.spec import SourceSpec
from pipelines.train.cli import train_config

# The `data` section of a config.json as every earlier version wrote it (flat fields).
SAVED_DATA = {
    "source": "npy", "dataset": "fashion_mnist", "data_dir": "/d", "download": False,
    "paths": ["a.npy", "b.npy"], "image_feature": "image", "label_feature": None,
    "labels_file": "labels.npy", "resize": True, "channels": 1, "skip_bad": True,
    "validation_fraction": 0.2, "test_fraction": 0.1, "split_seed": 3,
    "class_names": ["a", "b"], "fingerprint": "f" * 64, "binarize": None,
    "train_split": "train[:90%]", "validation_split": "train[90%:]", "test_split": "test",
    "image_size": [16, 16], "shuffle_buffer": 100, "cache": True, "in_memory_max_mb": 1024,
    "labelled_per_class": None, "labelled_share": None,
}


def test_a_saved_config_of_todays_format_loads_into_a_source_spec_and_is_written_back_the_same():
    saved = {**RunConfig().to_dict(), "data": SAVED_DATA}
    config = RunConfig.from_dict(json.loads(json.dumps(saved)))
    assert isinstance(config.data.source, SourceSpec)
    assert config.data.source.fields() == {
        "kind": "npy", "dataset": "fashion_mnist", "split": None, "data_dir": "/d", "paths": ("a.npy", "b.npy"),
        "image_feature": "image", "label_feature": None, "id_feature": None, "labels_file": "labels.npy",
        "resize": True, "skip_bad": True}
    assert config.data.own and config.data.name == "npy:a.npy,b.npy"
    assert config.to_dict() == saved and RunConfig.from_json(config.to_json()) == config


def test_the_flat_data_overrides_set_the_source_and_their_errors_name_the_data_field():
    config = resolve_config(None, ['data.source="images"', 'data.paths=["photos"]', "data.skip_bad=true"])
    assert (config.data.source.kind, config.data.source.paths, config.data.source.skip_bad) == ("images", ("photos",), True)
    assert resolve_config(None, ["data.dataset=mnist"]).data.source.dataset == "mnist"
    for override, message in (("data.source=bogus", "DataConfig.source must be one of"),
                              ('data.dataset=""', "DataConfig.dataset must name a tfds dataset"),
                              ("data.paths=3", "DataConfig.paths must be a list"),
                              ("data.split=test", "DataConfig has no field 'split'")):
        with pytest.raises(ConfigError, match=message):
            resolve_config(None, [override])


def test_a_source_is_checked_whole_when_it_is_opened_not_field_by_field():
    config = DataConfig.from_dict({"source": "images"})  # the paths come by the next override
    with pytest.raises(ConfigError, match="the input paths of the images input must name at least one path"):
        config.source_spec()
    assert DataConfig.from_dict({"source": "images", "paths": ["p"], "channels": 1}).source_spec().resize


def test_train_and_encode_build_the_same_source_from_the_same_flags():
    flags = ["--tfrecord", "r.tfrecord", "--image-feature", "img", "--label-feature", "", "--labels-file",
             "l.npy", "--resize", "--skip-bad", "--data-dir", "/d"]
    parser = build_parser()
    trained = train_config(parser.parse_args(["train", "--workdir", "w", *flags])).data.source
    encoded = config_from_args(parser.parse_args(["encode", "--model-base-path", "m", "--output-dir", "o",
                                                  *flags])).source
    assert trained.dataset == DataConfig().source.dataset  # a run's default tfds name stays, unused
    assert {**trained.fields(), "dataset": None} == encoded.fields() == {
        "kind": "tfrecord", "dataset": None, "split": None, "data_dir": "/d",
        "paths": ("r.tfrecord",), "image_feature": "img", "label_feature": None, "id_feature": None,
        "labels_file": "l.npy", "resize": True, "skip_bad": True}
