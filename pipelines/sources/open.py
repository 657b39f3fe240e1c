"""Opens the input a `SourceSpec` names: the one place that knows every kind of source."""

from __future__ import annotations

import numpy as np

from pipelines.sources.base import ImageFolderSource, NpySource, Source
from pipelines.sources.datasets import TfdsSource
from pipelines.sources.spec import SourceError, SourceSpec
from pipelines.sources.tfrecords import TFRecordSource

SOURCES: dict[str, type[Source]] = {
    "tfds": TfdsSource, "images": ImageFolderSource, "npy": NpySource, "tfrecord": TFRecordSource,
}


def open_source(spec: SourceSpec, image_shape) -> Source:
    """The source `spec` names, opened (listed and checked) for images of `image_shape`,
    with the labels of `spec.labels_file` when it names one.

    Raises:
        SourceError: the spec does not name one whole input (`SourceSpec.check`), the
            input does not exist, cannot be listed, or cannot fit the shape; the labels
            file does not hold one integer per input.
    """
    source = SOURCES[spec.check().kind](spec, image_shape)
    if spec.labels_file:
        source.label_override = read_labels(spec.labels_file, len(source))
        source.has_labels = True
        source.class_names = None  # numbered classes: the file's, not the subfolders
    return source


def read_labels(path: str, count: int) -> np.ndarray:
    """A labels .npy: (count,) integers >= 0, one per input in the source's order."""
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise SourceError(f"--labels {path}: cannot read it as a .npy array: {err}") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise SourceError(f"--labels {path} holds a {labels.dtype} array of shape {labels.shape}; "
                          f"expected one integer label per input, shape ({count},)")
    if len(labels) != count:
        raise SourceError(f"--labels {path} holds {len(labels)} labels for {count} inputs; "
                          f"expected one label per input, in the order the inputs are listed")
    if len(labels) and labels.min() < 0:
        raise SourceError(f"--labels {path} holds a negative label ({labels.min()}); "
                          f"classes are numbered from 0")
    return labels.astype(np.int64)
