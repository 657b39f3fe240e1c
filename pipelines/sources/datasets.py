"""A split of a tensorflow-datasets image dataset as a source, and the tfds checks and
offline preparation that training reads its datasets with too (`prepared_builder`).

`fashion_mnist` is prepared from the Debian package `dataset-fashion-mnist` into the
standard tfds dataset, with no network. Other datasets must already be prepared in the
data directory, or be downloaded on request (`download=True`). No code path here waits
on the network unless asked to.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipelines.sources import images as I
from pipelines.sources.spec import DataError, SourceError, SourceSpec
from pipelines.sources.base import Source, array_batch, assemble

log = logging.getLogger(__name__)

# Local sources of standard tfds datasets: tfds name -> (folder, Debian package).
LOCAL_SOURCES = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"), "dataset-fashion-mnist"),
}
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# === Preparing a dataset ===
def _local_files(name: str) -> Path | None:
    source = LOCAL_SOURCES.get(name)
    if source and all((source[0] / f"{f}.gz").is_file() for f in _IDX_FILES):
        return source[0]
    return None


def _prepare_fashion_mnist_locally(folder: Path, data_dir: str | None) -> None:
    """Prepares the standard tfds `fashion_mnist` from local gzipped IDX files.

    The stock builder downloads and checksums the upstream archives; here its split
    generator is handed the decompressed local files instead, so the result is the same
    standard dataset (same name, version and examples) without a network.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import mnist

    scratch = Path(tempfile.mkdtemp(prefix="fashion_mnist_"))
    try:
        paths = {}
        for name in _IDX_FILES:
            with gzip.open(folder / f"{name}.gz", "rb") as src, open(scratch / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
            paths[name] = str(scratch / name)

        class _LocalFiles:
            """Stands in for tfds' download manager: file names -> local paths."""

            def download_and_extract(self, urls):
                return {key: paths[url.rsplit("/", 1)[-1].removesuffix(".gz")] for key, url in urls.items()}

        class LocalFashionMNIST(mnist.FashionMNIST, skip_registration=True):
            name = "fashion_mnist"
            code_path = None  # no checksums file to look up: nothing is downloaded

            def _split_generators(self, dl_manager):
                return super()._split_generators(_LocalFiles())

        builder = LocalFashionMNIST(data_dir=data_dir)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prepared_builder(name: str, data_dir: str | None, download: bool = False):
    """A prepared tfds builder of the image dataset `name`: prepared already, prepared
    here from local files (`LOCAL_SOURCES`), or downloaded when `download` allows it.

    Raises:
        DataError: unknown name, no `image` feature, or not prepared and no way to
            prepare it offline (the message names the flag or package that fixes it).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        hint = str(err).strip().splitlines()
        raise DataError(
            f"unknown dataset {name!r}: tensorflow-datasets has no builder of that name "
            f"({hint[0] if hint else 'not found'}). Use a tfds image dataset such as "
            f"'fashion_mnist' or 'mnist'."
        ) from None
    if "image" not in builder.info.features:
        raise DataError(
            f"dataset {name!r} has no 'image' feature (features: "
            f"{sorted(builder.info.features.keys())}); the VAE needs an image dataset"
        )
    if builder.is_prepared():
        return builder
    local = _local_files(name)
    if local is not None:
        log.info("preparing %s from the local files in %s", name, local)
        _prepare_fashion_mnist_locally(local, data_dir)
        return tfds.builder(name, data_dir=data_dir)
    if download:
        log.info("downloading and preparing %s into %s", name, builder.data_dir)
        builder.download_and_prepare()
        return builder
    where = builder.data_dir
    advice = ["pass --download to let tensorflow-datasets fetch it (needs network)",
              "or --data-dir pointing at a directory where it is prepared"]
    if name in LOCAL_SOURCES:
        folder, package = LOCAL_SOURCES[name]
        advice.insert(0, f"install the Debian package {package} (apt-get install {package}, "
                         f"which puts its files in {folder})")
    raise DataError(f"dataset {name!r} is not prepared in {where}; " + ", ".join(advice))


# === What a builder's info tells ===
def num_examples(builder, split: str) -> int:
    """The number of examples of a tfds split expression such as `train[:10%]`."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError) as err:
        raise DataError(
            f"split {split!r} is not in dataset {builder.info.name!r} "
            f"(splits: {sorted(builder.info.splits.keys())}): {err}"
        ) from None


def num_classes(builder) -> int:
    """The number of classes of the dataset's `label` feature.

    Raises:
        DataError: the dataset has no class label (a conditional or M2 model needs one).
    """
    feature = builder.info.features["label"] if "label" in builder.info.features else None
    if feature is None or not hasattr(feature, "num_classes"):
        raise DataError(f"dataset {builder.info.name!r} has no class 'label' feature; a label-"
                        f"conditioned or semi-supervised model needs one")
    return int(feature.num_classes)


def class_names(builder) -> list[str] | None:
    """The names of the dataset's classes (its `label` feature's `names`), or None when it
    has no named class label. A label-conditioned export carries them."""
    feature = builder.info.features["label"] if "label" in builder.info.features else None
    names = getattr(feature, "names", None)
    return [str(name) for name in names] if names else None


# === A split as a source ===
class TfdsSource(Source):
    """A split expression (`test`, `train[:10%]`, `train+test`) of a prepared
    tensorflow-datasets image dataset.

    Ids are `<split>:<index in that split>` (`train+test` gives `train:0` ... `test:9999`);
    the label is the dataset's `label` feature if it has one.
    """

    kind = "tfds"
    _transient = ("_builder", "_tfds")

    def __init__(self, spec: SourceSpec, image_shape):
        super().__init__(spec, image_shape)
        builder = self._load_builder()
        features = builder.info.features
        try:
            instructions = self._tfds.core.ReadInstruction.from_spec(spec.split).to_absolute(builder.info.splits)
        except (KeyError, ValueError, AssertionError) as err:
            raise SourceError(f"split {spec.split!r} is not in dataset {spec.dataset!r} "
                              f"(splits: {sorted(builder.info.splits.keys())}): {err}") from None
        sizes = {name: int(info.num_examples) for name, info in builder.info.splits.items()}
        # [(split name, first index, end index)], each a plain slice tfds reads directly.
        self.ranges = []
        for i in instructions:
            first = i.from_ or 0
            self.ranges.append((i.splitname, first, max(first, sizes[i.splitname] if i.to is None else i.to)))
        self.offsets = np.cumsum([0] + [end - first for _, first, end in self.ranges]).tolist()
        image = features["image"]
        self.feature_shape = tuple(image.shape)
        if self.feature_shape != self.image_shape and not spec.resize:
            raise SourceError(f"dataset {spec.dataset!r} has {I.shape_text(self.feature_shape)} images, "
                              f"the model expects {I.shape_text(self.image_shape)}; pass --resize")
        self.encoded = image.np_dtype == np.uint8 and self.feature_shape[-1] in (1, 3, 4)
        self.has_labels = "label" in features
        self.class_names = class_names(builder)
        self.version = str(builder.info.version)
        self.location = builder.data_dir
        self._builder = builder

    def _load_builder(self):
        import tensorflow_datasets as tfds

        self._tfds = tfds
        return prepared_builder(self.spec.dataset, self.spec.data_dir)

    def __len__(self) -> int:
        return self.offsets[-1]

    def first_shape(self):
        return None if None in self.feature_shape else tuple(self.feature_shape)

    def describe(self) -> dict:
        return {"kind": self.kind, "dataset": self.spec.dataset, "version": self.version,
                "split": self.spec.split, "num_inputs": len(self), "location": self.location}

    def _dataset(self, name: str, first: int, end: int) -> tf.data.Dataset:
        """Examples [first, end) of split `name` as (image, label), through tfds."""
        decoders = {"image": self._tfds.decode.SkipDecoding()} if self.encoded else None
        ds = self._builder.as_dataset(split=f"{name}[{first}:{end}]", shuffle_files=False, decoders=decoders)
        channels = self.feature_shape[-1]

        def decode(example):
            image = example["image"]
            if self.encoded:  # decoded here, in parallel, rather than by tfds one by one
                image = tf.io.decode_image(image, channels=channels, expand_animations=False)
            label = example["label"] if self.has_labels else tf.constant(-1, tf.int64)
            return image, tf.cast(label, tf.int64)

        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _record_files(self, name: str) -> list[tuple[str, int]] | None:
        """(file, examples) of a split stored as TFRecord with encoded images, else None."""
        info = self._builder.info
        label = info.features["label"] if self.has_labels else None
        if (not self.encoded or None in self.feature_shape or "tfrecord" not in str(info.file_format).lower()
                or (label is not None and label.np_dtype != np.int64)):
            return None
        split = info.splits[name]
        return [(str(path), int(n)) for path, n in zip(split.filepaths, split.shard_lengths)]

    def _batched(self, name: str, first: int, end: int, batch_size: int) -> tf.data.Dataset:
        """Batches of (uint8 images, int64 labels) of examples [first, end) of split `name`.

        tfds parses one example at a time; for TFRecord files the records are read and
        parsed here in batches instead (the same examples in the same order, 2-3x faster).
        """
        files = self._record_files(name)
        if files is None:
            return self._dataset(name, first, end).batch(batch_size)
        parts, offset = [], 0
        for path, count in files:
            a, b = max(first, offset), min(end, offset + count)
            if a < b:
                parts.append(tf.data.TFRecordDataset(path).skip(a - offset).take(b - a))
            offset += count
        records = parts[0]
        for part in parts[1:]:
            records = records.concatenate(part)
        spec = {"image": tf.io.FixedLenFeature([], tf.string)}
        if self.has_labels:
            spec["label"] = tf.io.FixedLenFeature([], tf.int64)
        channels = self.feature_shape[-1]

        def decode(example):
            image = tf.io.decode_image(example["image"], channels=channels, expand_animations=False)
            label = example["label"] if self.has_labels else tf.constant(-1, tf.int64)
            return tf.ensure_shape(image, self.feature_shape), label

        parsed = records.batch(1024).map(lambda s: tf.io.parse_example(s, spec)).unbatch()
        return parsed.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)

    def _batches(self, start, stop, batch_size):
        if getattr(self, "_builder", None) is None:
            self._builder = self._load_builder()
        for r, (name, first, end) in enumerate(self.ranges):
            a, b = max(start, self.offsets[r]), min(stop, self.offsets[r + 1])
            if a >= b:
                continue
            offset = first - self.offsets[r]  # position -> index in the split
            if None in self.feature_shape:  # images of varying size: one at a time
                yield from self._varying(self._dataset(name, a + offset, b + offset), name, a, offset, batch_size)
                continue
            position = a
            for raw, labels in self._batched(name, a + offset, b + offset, batch_size).prefetch(2).as_numpy_iterator():
                indices = list(range(position, position + len(labels)))
                position += len(labels)
                ids = [f"{name}:{i + offset}" for i in indices]
                yield array_batch(indices, ids, self._labels(labels), raw, self.image_shape, self.spec.resize)

    def _labels(self, labels: np.ndarray) -> list[int | None]:
        return labels.tolist() if self.has_labels else [None] * len(labels)

    def _varying(self, ds, name, start, offset, batch_size):
        items = []
        for index, (image, label) in enumerate(ds.as_numpy_iterator(), start):
            try:
                image = I.conform(image, self.image_shape, self.spec.resize)
            except I.BadInput as err:
                image = err
            items.append((index, f"{name}:{index + offset}", self._labels(np.array([label]))[0], image))
            if len(items) == batch_size:
                yield assemble(items, self.image_shape)
                items = []
        if items:
            yield assemble(items, self.image_shape)
