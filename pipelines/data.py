"""tensorflow-datasets image datasets as tf.data pipelines, prepared offline where possible.

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
import tensorflow_datasets as tfds

from core.errors import UserError
from pipelines.config import DataConfig

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


class DataError(UserError):
    """A dataset cannot be found, prepared or used; the message says what to do."""


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


def get_builder(config: DataConfig):
    """Returns a prepared tfds builder for `config.dataset`.

    Raises:
        DataError: unknown name, no `image` feature, or not prepared and no way to
            prepare it offline (the message names the flag or package that fixes it).
    """
    name = config.dataset
    try:
        builder = tfds.builder(name, data_dir=config.data_dir)
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
        _prepare_fashion_mnist_locally(local, config.data_dir)
        return tfds.builder(name, data_dir=config.data_dir)
    if config.download:
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


def image_shape(builder, config: DataConfig) -> tuple[int, int, int]:
    """The (H, W, C) the model sees: the dataset's, or `config.image_size` with its C."""
    height, width, channels = builder.info.features["image"].shape
    if config.image_size is not None:
        height, width = config.image_size
    if height is None or width is None or channels is None:
        raise DataError(
            f"dataset {config.dataset!r} has images of varying size "
            f"{builder.info.features['image'].shape}; set data.image_size=[H,W] to resize them"
        )
    return int(height), int(width), int(channels)


def num_examples(builder, split: str) -> int:
    """The number of examples of a tfds split expression such as `train[:10%]`."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError) as err:
        raise DataError(
            f"split {split!r} is not in dataset {builder.info.name!r} "
            f"(splits: {sorted(builder.info.splits.keys())}): {err}"
        ) from None


def _decode(config: DataConfig, shape):
    def decode(example):
        image = example["image"]
        if config.image_size is not None:
            image = tf.cast(tf.image.resize(image, shape[:2]), tf.uint8)
        label = example.get("label", tf.constant(-1, tf.int64))
        return image, tf.cast(label, tf.int64)

    return decode


def _to_float(images):
    """uint8 0..255 -> float32 0..1; float32 images (own data streamed) pass unchanged."""
    if images.dtype == tf.float32:
        return images
    return tf.cast(images, tf.float32) / 255.0


def _binarize(x, seed):
    """A Bernoulli draw of each intensity in [0, 1], stateless: keyed by an int64 [2] seed."""
    noise = tf.random.stateless_uniform(tf.shape(x), seed=seed)
    return tf.cast(noise < x, tf.float32)


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


def dataset_class_names(config: DataConfig) -> list[str] | None:
    """`class_names` of `config.dataset` from its tfds builder's info, without preparing or
    reading the data; None when the builder cannot be made here (the export then numbers
    the classes). Own data: the names the run recorded (`config.class_names`)."""
    if config.own:
        return list(config.class_names) if config.class_names else None
    try:
        return class_names(tfds.builder(config.dataset, data_dir=config.data_dir))
    except Exception as err:  # an unknown or unreadable dataset: the names are a nicety
        log.warning("no class names for %r: %s", config.dataset, err)
        return None


def split_labels(builder, split: str) -> np.ndarray:
    """The labels of a split in its stored order (the order `shuffle_files=False` reads,
    the example indices of `labelled`): (N,) int64, images not decoded."""
    num_examples(builder, split)
    num_classes(builder)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda example: example["label"]).batch(65536)
    return np.concatenate([batch.numpy() for batch in ds]).astype(np.int64)


def training_dataset(builder, config: DataConfig, split: str, batch_size: int, *, binarize: bool,
                     seed: int, repeat: bool = False, labelled: np.ndarray | None = None,
                     labelled_per_batch: int | None = None) -> tf.data.Dataset:
    """Shuffled batches of (images in [0, 1], labels) for training.

    With `binarize`, each batch is a fresh Bernoulli draw of the intensities, so an image
    is binarised anew every time it is seen (dynamic binarisation). With `labelled`, a
    boolean mask over the split's examples in stored order, the label of every example
    outside the mask is -1 (semi-supervised training); with `labelled_per_batch` too,
    every batch holds that many labelled examples (`shuffled_batches`).
    """
    shape = image_shape(builder, config)
    num_examples(builder, split)
    ds = builder.as_dataset(split=split, shuffle_files=labelled is None,
                            read_config=tfds.ReadConfig(shuffle_seed=seed))
    ds = ds.map(_decode(config, shape), num_parallel_calls=tf.data.AUTOTUNE)
    if labelled is not None:  # stored order: the example's index keys the mask
        mask = tf.constant(labelled, tf.bool)
        unlabelled = tf.constant(-1, tf.int64)
        ds = ds.enumerate().map(lambda index, example: (
            example[0], tf.where(mask[index], example[1], unlabelled)))
    if config.cache:
        ds = ds.cache()
    return shuffled_batches(ds, batch_size, binarize=binarize, seed=seed, repeat=repeat,
                            shuffle_buffer=config.shuffle_buffer, labelled_per_batch=labelled_per_batch)


def shuffled_batches(ds: tf.data.Dataset, batch_size: int, *, binarize: bool, seed: int, repeat: bool,
                     shuffle_buffer: int, labelled_per_batch: int | None = None) -> tf.data.Dataset:
    """(image, label) examples (uint8 or float32 images) -> shuffled batches of (images in
    [0, 1], labels), each binarised anew with `binarize` (see `training_dataset`).

    With `labelled_per_batch` L (`data.labelled_share`), the batches are repeated and each
    holds L labelled examples (label >= 0; the small labelled set is cached in memory and
    reshuffled on each of its passes) and `batch_size` - L unlabelled ones, rows mixed
    (`_mix_rows`).
    """
    if labelled_per_batch is not None:
        return _mixed_shuffled_batches(ds, batch_size, labelled_per_batch, binarize=binarize, seed=seed,
                                       shuffle_buffer=shuffle_buffer)
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=repeat, num_parallel_calls=tf.data.AUTOTUNE)

    # One random int64 per batch keys a stateless draw. `Dataset.random` gives a new
    # sequence on each pass, so every epoch sees fresh binarisations (a stateful
    # `tf.random.uniform` in `map` would repeat the first epoch's draws).
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def prepare(batch, key):
        images, labels = batch
        x = _to_float(images)
        if binarize:
            x = _binarize(x, tf.stack([key, tf.constant(seed, tf.int64)]))
        return x, labels

    ds = tf.data.Dataset.zip(ds, keys)
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _batch_keys(seed: int, number) -> tuple[tf.Tensor, tf.Tensor]:
    """Two stateless keys of global batch `number`: the order of its rows, its binarisation."""
    keys = tf.random.experimental.stateless_split(tf.stack([tf.constant(seed, tf.int64), number]), num=2)
    return keys[0], keys[1]


def _mix_rows(first, second, key):
    """The rows of two batches (tensors, or tuples of them) concatenated and put in an order
    drawn by `key`, so that every replica's slice of a global batch gets rows of both."""
    rows = tf.nest.map_structure(lambda a, b: tf.concat([a, b], 0), first, second)
    size = tf.shape(tf.nest.flatten(rows)[0])[0]
    order = tf.argsort(tf.random.stateless_uniform([size], seed=key))
    return tf.nest.map_structure(lambda t: tf.gather(t, order), rows)


def _mixed_shuffled_batches(ds: tf.data.Dataset, batch_size: int, labelled_per_batch: int, *,
                            binarize: bool, seed: int, shuffle_buffer: int) -> tf.data.Dataset:
    """`shuffled_batches` of a fixed number of labelled examples per batch."""

    def kind(keep, size: int, salt: int, cache: bool) -> tf.data.Dataset:
        part = ds.filter(lambda image, label: keep(label))
        if cache:
            part = part.cache()
        part = part.shuffle(shuffle_buffer, seed=seed + salt, reshuffle_each_iteration=True)
        return part.repeat().batch(size, drop_remainder=True)

    labelled = kind(lambda label: label >= 0, labelled_per_batch, 0, cache=True)
    unlabelled = kind(lambda label: label < 0, batch_size - labelled_per_batch, 1, cache=False)

    def prepare(first, second, number):
        order_key, noise_key = _batch_keys(seed, number)
        images, labels = _mix_rows(first, second, order_key)
        x = _to_float(images)
        if binarize:
            x = _binarize(x, noise_key)
        return x, labels

    ds = tf.data.Dataset.zip(labelled, unlabelled, tf.data.Dataset.counter())
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def in_memory_size_mb(builder, config: DataConfig, split: str) -> float:
    """MB of the split's decoded uint8 images."""
    height, width, channels = image_shape(builder, config)
    return num_examples(builder, split) * height * width * channels / 2**20


def in_memory_training_dataset(builder, config: DataConfig, split: str, batch_size: int, *,
                               binarize: bool, seed: int, labelled: np.ndarray | None = None,
                               labelled_per_batch: int | None = None) -> tf.data.Dataset:
    """Repeated global batches of (images in [0, 1], labels) from the split held in memory.

    The split is decoded once into a uint8 array. Each epoch is a fresh permutation
    (a stateless shuffle keyed by the seed and the epoch, the last incomplete batch
    dropped); each batch is gathered by index, and with `binarize` it is a fresh
    Bernoulli draw keyed by (seed, global batch number), so every epoch sees new
    binarisations. With `labelled` (a boolean mask over the split in stored order) the
    other examples carry the label -1; with `labelled_per_batch` too, every batch holds
    that many labelled examples (`in_memory_batches`).
    """
    shape = image_shape(builder, config)
    count = num_examples(builder, split)
    if count < batch_size:
        raise DataError(f"split {split!r} has fewer examples than one batch of {batch_size}")
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(_decode(config, shape), num_parallel_calls=tf.data.AUTOTUNE).batch(count)
    images, labels = next(iter(ds))  # (N, H, W, C) uint8, (N,)
    if labelled is not None:
        labels = tf.where(tf.constant(labelled, tf.bool), labels, tf.constant(-1, tf.int64))
    return in_memory_batches(images, labels, batch_size, binarize=binarize, seed=seed,
                             labelled_per_batch=labelled_per_batch)


def in_memory_batches(images, labels, batch_size: int, *, binarize: bool, seed: int,
                      labelled_per_batch: int | None = None) -> tf.data.Dataset:
    """Repeated batches gathered by index from images held in memory ((N, H, W, C) uint8 or
    float32, (N,) int64 labels): a fresh permutation every epoch, fresh binarisations
    (see `in_memory_training_dataset`).

    With `labelled_per_batch` L (`data.labelled_share`), each batch holds L labelled
    examples (label >= 0) and `batch_size` - L unlabelled ones: two endless streams of
    indices, each a fresh permutation of its kind on every pass (the small labelled set
    passes many times), the rows mixed (`_mix_rows`).
    """
    images = tf.convert_to_tensor(images)
    labels = tf.convert_to_tensor(labels, tf.int64)
    count = int(images.shape[0])
    steps = count // batch_size
    if steps < 1:
        raise DataError(f"the training images ({count}) are fewer than one batch of {batch_size}")
    if labelled_per_batch is not None:
        return _in_memory_mixed_batches(images, labels, batch_size, labelled_per_batch,
                                        binarize=binarize, seed=seed)
    seed = tf.constant(seed, tf.int64)

    def epoch_batches(epoch):
        order = tf.argsort(tf.random.stateless_uniform([count], seed=tf.stack([seed, epoch])))
        index = tf.reshape(order[: steps * batch_size], (steps, batch_size))
        numbers = epoch * steps + tf.range(steps, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((index, numbers))

    def gather(index, number):
        x = _to_float(tf.gather(images, index))
        if binarize:
            x = _binarize(x, tf.stack([number, seed]))
        return x, tf.gather(labels, index)

    ds = tf.data.Dataset.counter().flat_map(epoch_batches)
    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _in_memory_mixed_batches(images: tf.Tensor, labels: tf.Tensor, batch_size: int, labelled_per_batch: int,
                             *, binarize: bool, seed: int) -> tf.data.Dataset:
    """`in_memory_batches` of a fixed number of labelled examples per batch."""
    known = labels.numpy() >= 0
    if known.all() or not known.any():
        raise DataError(f"a fixed labelled share of each batch needs labelled and unlabelled training "
                        f"images; these {len(known)} are all {'labelled' if known.any() else 'unlabelled'}")

    def passes(indices: np.ndarray, salt: int) -> tf.data.Dataset:
        """`indices` without end, in a fresh order (keyed by the seed and the pass) each pass."""
        indices = tf.constant(indices, tf.int64)

        def one_pass(number):
            key = tf.stack([tf.constant(seed, tf.int64), 2 * number + salt])
            order = tf.argsort(tf.random.stateless_uniform(tf.shape(indices), seed=key))
            return tf.data.Dataset.from_tensor_slices(tf.gather(indices, order))

        return tf.data.Dataset.counter().flat_map(one_pass)

    labelled = passes(np.flatnonzero(known), 0).batch(labelled_per_batch, drop_remainder=True)
    unlabelled = passes(np.flatnonzero(~known), 1).batch(batch_size - labelled_per_batch, drop_remainder=True)

    def gather(first, second, number):
        order_key, noise_key = _batch_keys(seed, number)
        index = _mix_rows(first, second, order_key)
        x = _to_float(tf.gather(images, index))
        if binarize:
            x = _binarize(x, noise_key)
        return x, tf.gather(labels, index)

    ds = tf.data.Dataset.zip(labelled, unlabelled, tf.data.Dataset.counter())
    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(builder, config: DataConfig, split: str, batch_size: int, *, binarize: bool,
                       seed: int, limit: int | None = None) -> tf.data.Dataset:
    """Batches of (images, labels) in a fixed order; binarised once, the same way on
    every call (a stateless draw keyed by the seed and the example's index)."""
    shape = image_shape(builder, config)
    num_examples(builder, split)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if limit is not None:
        ds = ds.take(limit)
    ds = ds.map(_decode(config, shape), num_parallel_calls=tf.data.AUTOTUNE)
    return fixed_batches(ds, batch_size, binarize=binarize, seed=seed, cache=config.cache)


def fixed_batches(ds: tf.data.Dataset, batch_size: int, *, binarize: bool, seed: int,
                  cache: bool) -> tf.data.Dataset:
    """(image, label) examples -> batches in their order, binarised once by (seed, index)."""

    def prepare(index, example):
        image, label = example
        x = _to_float(image)
        if binarize:
            x = _binarize(x, tf.stack([tf.cast(seed, tf.int64), index]))
        return x, label

    ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
