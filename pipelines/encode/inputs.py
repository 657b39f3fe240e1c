"""Opens the input a job names: the one place that knows every kind of source."""

from __future__ import annotations

from pipelines.encode.config import EncodeConfig
from pipelines.encode.datasets import TfdsSource
from pipelines.encode.sources import ImageFolderSource, NpySource, Source
from pipelines.encode.tfrecords import TFRecordSource

SOURCES: dict[str, type[Source]] = {
    "tfds": TfdsSource, "images": ImageFolderSource, "npy": NpySource, "tfrecord": TFRecordSource,
}


def open_source(config: EncodeConfig, image_shape) -> Source:
    """The source `config` names, opened (listed and checked) for a model of `image_shape`.

    Raises:
        EncodeError: the input does not exist, cannot be listed, or cannot fit the model.
    """
    return SOURCES[config.input_kind](config, image_shape)
