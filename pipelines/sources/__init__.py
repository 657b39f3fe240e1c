"""The inputs of `vae encode`, `vae train` and `vae tune`: one source layer.

    from pipelines.sources import SourceSpec, open_source
    source = open_source(SourceSpec(kind="images", paths=("photos/",), resize=True), (64, 64, 3))
    for batch in source.batches(0, len(source), 256): ...

Modules: `spec` (what a source is, `SourceError`, `DataError`), `base` (the `Source` base,
image folders, .npy), `datasets` (tfds: a split as a source, and `prepared_builder`, the
checks and offline preparation training reads its datasets with too), `tfrecords`,
`images` (decoding, scaling, resizing, bad-input checks), `open` (`open_source`), `cli`
(the input flags the three commands share). Nothing here imports `model/`, `pipelines/train/` or `pipelines/tune/`, not even
through another module (`tests/test_architecture.py` follows the imports): the batch
encoder works from an export alone.

Loaded lazily (PEP 562), so that the `vae` parser does not load TensorFlow.
"""

from core.lazy import lazy_attributes

_WHERE = {
    "DataError": "pipelines.sources.spec",
    "SourceError": "pipelines.sources.spec",
    "SourceSpec": "pipelines.sources.spec",
    "Source": "pipelines.sources.base",
    "open_source": "pipelines.sources.open",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_attributes(__name__, _WHERE)
