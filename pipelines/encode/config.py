"""What an encode job reads, writes and how: one frozen dataclass, validated on creation."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

from core.config import ConfigBase, ConfigError, require, require_choice
from pipelines.sources.spec import KINDS as INPUT_KINDS
from core.errors import UserError
from serving import contract as C

FORMATS = ("parquet", "tfrecord")
RUNNERS = ("local", "beam")
DEFAULT_ROWS_PER_SHARD = 10_000


class EncodeError(UserError):
    """The job cannot run as asked (bad input, bad arguments, existing output); the message
    names the input, file or flag concerned."""


class EncodeConfigError(EncodeError, ConfigError):
    """An `EncodeConfig` value is invalid; the message names the flag that sets it."""


@dataclasses.dataclass(frozen=True)
class EncodeConfig(ConfigBase):
    """An offline batch-encoding job: an exported model, one input, one output folder.

    Args:
        model: an export's version folder (`<base>/<name>/<version>`), or its model
            folder holding integer version folders (the latest is used).
        out: the output folder (shards, `_manifest.json`).
        input_kind: `tfds`, `images` (a folder of PNG/JPEG files), `npy` or `tfrecord`.
        dataset, split, data_dir: the tfds dataset, split expression and data directory.
        paths: the folder (`images`), or files / glob patterns (`npy`, `tfrecord`).
        image_feature, label_feature, id_feature: tf.train.Example feature names of a
            TFRecord input (the label and id features are optional).
        labels_file: a .npy of one integer label per input (the label column).
        resize: resize (bilinear) and convert channels of inputs whose shape differs from
            the model's; without it such inputs are bad inputs.
        output_format: `parquet` or `tfrecord`.
        log_likelihood: add the `log_likelihood` column (IWAE, the export's signature).
        reconstruction_error: add the per-image mean squared error of `reconstruct`.
        skip_bad: record bad inputs in the manifest and go on, instead of stopping.
        overwrite: replace a finished (or differently configured) output.
        rows_per_shard: inputs per output shard (the unit of resumption).
        batch_size: images per signature call (at most the contract's MAX_BATCH).
        runner: `local` (one process, resumable) or `beam` (an Apache Beam pipeline).
        beam_args: Beam pipeline flags (`--runner=DataflowRunner`, `--project=...`).
        progress: show a progress bar on stderr (local runner).

    Example:
        >>> EncodeConfig(model="exports/vae", out="codes/test", input_kind="tfds",
        ...              dataset="fashion_mnist", split="test")
    """

    model: str
    out: str
    input_kind: str
    dataset: str | None = None
    split: str | None = None
    data_dir: str | None = None
    paths: tuple[str, ...] = ()
    image_feature: str = "image"
    label_feature: str | None = "label"
    id_feature: str | None = None
    labels_file: str | None = None
    resize: bool = False
    output_format: str = "parquet"
    log_likelihood: bool = False
    reconstruction_error: bool = False
    skip_bad: bool = False
    overwrite: bool = False
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    batch_size: int = C.MAX_BATCH
    runner: str = "local"
    beam_args: tuple[str, ...] = ()
    progress: bool = True

    FIELD_LABELS: ClassVar[dict[str, str]] = {
        "model": "--model-base-path", "out": "--output-dir", "input_kind": "the input kind", "dataset": "--dataset",
        "paths": "the input paths", "image_feature": "--image-feature", "output_format": "--format",
        "runner": "--runner", "rows_per_shard": "--rows-per-shard", "batch_size": "--batch-size",
    }
    ERROR: ClassVar[type[ConfigError]] = EncodeConfigError

    def __post_init__(self) -> None:
        require(self, "model", bool(self.model), "must name an export folder")
        require(self, "out", bool(self.out), "must name an output folder")
        require_choice(self, "input_kind", INPUT_KINDS)
        require_choice(self, "output_format", FORMATS)
        require_choice(self, "runner", RUNNERS)
        require(self, "rows_per_shard", self.rows_per_shard >= 1, "must be >= 1")
        require(self, "batch_size", 1 <= self.batch_size <= C.MAX_BATCH,
                f"must be within [1, {C.MAX_BATCH}] (the serving contract's limit)")
        if self.input_kind == "tfds":
            require(self, "dataset", bool(self.dataset and self.split), "needs --split (e.g. --split test)")
        else:
            require(self, "paths", bool(self.paths), f"of the {self.input_kind} input must name at least one path")
        if self.input_kind == "images":
            require(self, "paths", len(self.paths) == 1, "of --images must be one folder")
        if self.input_kind == "tfrecord":
            require(self, "image_feature", bool(self.image_feature), "must name a feature")

    def source_spec(self):
        """The input as the source layer names it (`pipelines.sources.SourceSpec`)."""
        from pipelines.sources.spec import SourceSpec

        return SourceSpec(kind=self.input_kind, dataset=self.dataset, split=self.split,
                          data_dir=self.data_dir, paths=self.paths, image_feature=self.image_feature,
                          label_feature=self.label_feature, id_feature=self.id_feature,
                          labels_file=self.labels_file, resize=self.resize, skip_bad=self.skip_bad)

    def identity(self) -> dict[str, Any]:
        """The settings, beside the model and the input itself, that decide the output's
        content: a partial output is resumed only by a job with the same ones. Batch size,
        runner, progress and `skip_bad` do not count (a run stopped by a bad input may be
        resumed with --skip-bad)."""
        keys = ("input_kind", "resize", "output_format", "log_likelihood", "reconstruction_error",
                "rows_per_shard")
        return json.loads(json.dumps({k: getattr(self, k) for k in keys}))
