"""What a source is: one frozen dataclass naming the input, and the error of a bad one.

`vae encode`, `vae train` and `vae tune` take the same input flags (`pipelines.sources.cli`)
and describe their input with a `SourceSpec`; `pipelines.sources.open_source` opens it.
"""

from __future__ import annotations

import dataclasses

from core.config import ConfigBase, ConfigError, require, require_choice
from core.errors import UserError

KINDS = ("tfds", "images", "npy", "tfrecord")


class SourceError(UserError):
    """An input cannot be listed, read or used; the message names the file or flag."""


class SourceConfigError(SourceError, ConfigError):
    """A `SourceSpec` value is invalid; the message names the flag that sets it."""


class DataError(SourceError):
    """A dataset cannot be found, prepared or used for training; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class SourceSpec(ConfigBase):
    """One input: a tfds split, a folder of images, .npy files or TFRecord files.

    Args:
        kind: `tfds`, `images` (a folder of PNG/JPEG files), `npy` or `tfrecord`.
        dataset, split, data_dir: the tfds dataset, split expression and data directory.
        paths: the folder (`images`), or files / glob patterns (`npy`, `tfrecord`).
        image_feature, label_feature, id_feature: tf.train.Example feature names of a
            TFRecord input (the label and id features are optional).
        labels_file: a .npy of one integer label per input, in the source's order.
        resize: resize (bilinear) and convert channels of inputs of another shape;
            without it such inputs are bad inputs.
        skip_bad: record bad inputs and go on, instead of stopping on the first.
    """

    kind: str
    dataset: str | None = None
    split: str | None = None
    data_dir: str | None = None
    paths: tuple[str, ...] = ()
    image_feature: str = "image"
    label_feature: str | None = "label"
    id_feature: str | None = None
    labels_file: str | None = None
    resize: bool = False
    skip_bad: bool = False

    FIELD_LABELS = {"kind": "the input kind", "dataset": "--dataset", "paths": "the input paths",
                    "image_feature": "--image-feature", "labels_file": "--labels"}
    ERROR = SourceConfigError

    def __post_init__(self) -> None:
        require_choice(self, "kind", KINDS)

    def check(self, *, split_required: bool = False) -> SourceSpec:
        """Checks that the fields name one whole input (not on creation: a run config's
        overrides set `kind` and `paths` one at a time); returns the spec.

        Args:
            split_required: a tfds input must name its split (`vae encode`; training
                reads its splits from the run config).

        Raises:
            The class's `ERROR`: naming the flag (`FIELD_LABELS`) of the field that does not fit.
        """
        if self.kind == "tfds":
            require(self, "dataset", bool(self.dataset), "must name a tfds dataset")
            require(self, "dataset", bool(self.split) or not split_required, "needs --split (e.g. --split test)")
        else:
            require(self, "paths", bool(self.paths), f"of the {self.kind} input must name at least one path")
        if self.kind == "images":
            require(self, "paths", len(self.paths) == 1, "of --images must be one folder")
        if self.kind == "tfrecord":
            require(self, "image_feature", bool(self.image_feature), "must name a feature")
        require(self, "labels_file", self.labels_file is None or self.kind != "tfds",
                "goes with --images, --npy or --tfrecord (a tfds dataset has its own labels)")
        return self

    def fields(self) -> dict:
        """The spec's fields by name (of the plain `SourceSpec`, also for a subclass)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SourceSpec)}


# A training run's source (`pipelines.config.DataConfig.source`) as its `data` section
# spells the fields, flat beside the other data fields (config.json, `data.FIELD=VALUE`
# overrides, help texts): `data.source` is the kind; a run has no `split` (its splits are
# `data.train_split`, ...) and no `id_feature` (ids are encode's).
DATA_FIELDS = {"source": "kind", **{f.name: f.name for f in dataclasses.fields(SourceSpec)
                                    if f.name not in ("kind", "split", "id_feature")}}
