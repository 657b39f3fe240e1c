"""What an encode job reads, writes and how: one frozen dataclass, validated on creation."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

from core.config import ConfigBase, ConfigError, require, require_choice
from core.errors import UserError
from pipelines.sources.spec import SourceConfigError, SourceSpec
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
        source: the input (`pipelines.sources.SourceSpec`: a tfds split, which must be
            named, a folder of images, .npy or TFRecord files; its labels file fills the
            label column; with `resize` inputs of another shape than the model's are
            resized, and with `skip_bad` bad inputs are recorded in the manifest and
            skipped instead of stopping the job).
        output_format: `parquet` or `tfrecord`.
        log_likelihood: add the `log_likelihood` column (IWAE, the export's signature).
        reconstruction_error: add the per-image mean squared error of `reconstruct`.
        overwrite: replace a finished (or differently configured) output.
        rows_per_shard: inputs per output shard (the unit of resumption).
        batch_size: images per signature call (at most the contract's MAX_BATCH).
        runner: `local` (one process, resumable) or `beam` (an Apache Beam pipeline).
        beam_args: Beam pipeline flags (`--runner=DataflowRunner`, `--project=...`).
        progress: show a progress bar on stderr (local runner).

    Example:
        >>> EncodeConfig(model="exports/vae", out="codes/test",
        ...              source=SourceSpec(kind="tfds", dataset="fashion_mnist", split="test"))
    """

    model: str
    out: str
    source: SourceSpec
    output_format: str = "parquet"
    log_likelihood: bool = False
    reconstruction_error: bool = False
    overwrite: bool = False
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    batch_size: int = C.MAX_BATCH
    runner: str = "local"
    beam_args: tuple[str, ...] = ()
    progress: bool = True

    FIELD_LABELS: ClassVar[dict[str, str]] = {
        "model": "--model-base-path", "out": "--output-dir", "output_format": "--format",
        "runner": "--runner", "rows_per_shard": "--rows-per-shard", "batch_size": "--batch-size",
    }
    ERROR: ClassVar[type[ConfigError]] = EncodeConfigError

    def __post_init__(self) -> None:
        require(self, "model", bool(self.model), "must name an export folder")
        require(self, "out", bool(self.out), "must name an output folder")
        try:
            self.source.check(split_required=True)
        except SourceConfigError as err:
            raise EncodeConfigError(str(err)) from None
        require_choice(self, "output_format", FORMATS)
        require_choice(self, "runner", RUNNERS)
        require(self, "rows_per_shard", self.rows_per_shard >= 1, "must be >= 1")
        require(self, "batch_size", 1 <= self.batch_size <= C.MAX_BATCH,
                f"must be within [1, {C.MAX_BATCH}] (the serving contract's limit)")

    def identity(self) -> dict[str, Any]:
        """The settings, beside the model and the input itself, that decide the output's
        content: a partial output is resumed only by a job with the same ones. Batch size,
        runner, progress and `skip_bad` do not count (a run stopped by a bad input may be
        resumed with --skip-bad)."""
        keys = ("output_format", "log_likelihood", "reconstruction_error", "rows_per_shard")
        identity = {"input_kind": self.source.kind, "resize": self.source.resize,
                    **{k: getattr(self, k) for k in keys}}
        return json.loads(json.dumps(identity))
