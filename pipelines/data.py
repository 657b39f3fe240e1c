"""The training data: one interface (`TrainingData`) over a tensorflow-datasets dataset
(`TfdsData`, here) and the user's own files (`pipelines.own_data.OwnData`), opened by
`open_training_data`; both feed the batches of `pipelines.batches`.

The tfds checks and the offline preparation (Fashion-MNIST from Debian's package) are the
source layer's (`pipelines.sources.datasets`), which `vae encode` reads tfds with too.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from pipelines.batches import fixed_batches, in_memory_batches, shuffled_batches
from pipelines.config import DataConfig
from pipelines.sources.datasets import LOCAL_SOURCES, class_names, num_classes, num_examples, prepared_builder
from pipelines.sources.spec import DataError

log = logging.getLogger(__name__)

__all__ = ["LOCAL_SOURCES", "DataError", "SPLITS", "TfdsData", "TrainingData", "class_names",
           "dataset_class_names", "evaluation_dataset", "get_builder", "image_shape",
           "in_memory_training_dataset", "num_classes", "num_examples", "open_training_data",
           "split_labels", "training_dataset"]

SPLITS = ("train", "validation", "test")  # the splits every training data has


class TrainingData(Protocol):
    """What a run asks of its data, whatever its back end (`open_training_data`)."""

    image_shape: tuple[int, int, int]  # (H, W, C) the model sees

    def count(self, split: str) -> int:
        """The images of a split of `SPLITS`."""

    def split_name(self, split: str) -> str:
        """How the labelled subset's record names the split (a tfds split expression)."""

    def num_classes(self) -> int:
        """The classes. Raises DataError when the images carry no labels."""

    def class_names(self) -> list[str] | None:
        """The classes' names (the export carries them), or None."""

    def split_labels(self, split: str) -> np.ndarray:
        """The labels of a split's images in its order: (N,) int64, -1 for none."""

    def resolved(self, config: DataConfig) -> DataConfig:
        """The data config with what a run records of the data (own data's classes, hash)."""

    def record(self) -> dict | None:
        """What the workdir's source.json holds; None when the dataset names itself (tfds)."""

    def train(self, batch_size: int, *, binarize: bool, seed: int, labelled: np.ndarray | None = None,
              labelled_per_batch: int | None = None, start: int = 0) -> tf.data.Dataset:
        """Repeated shuffled batches of the training split (see `TfdsData.train`), from
        global batch `start` on (`pipelines.batches`: a resumed run's optimizer step).
        Raises DataError when it holds fewer images than one batch."""

    def evaluation(self, split: str, batch_size: int, *, binarize: bool, seed: int,
                   limit: int | None = None) -> tf.data.Dataset:
        """A split's batches in a fixed order, binarised once."""


def open_training_data(config: DataConfig, workers: int = 1) -> TrainingData:
    """The data `config` names, opened for `workers` workers (one worker may hold the
    training split in memory; several stream it, tf.data sharding it).

    Raises:
        SourceError: the data cannot be found, prepared, read or split (a `DataError` for
            a tfds dataset); the message says what to do.
    """
    if config.own:
        from pipelines.own_data import open_own_data

        return open_own_data(config, workers)
    return TfdsData(get_builder(config), config, workers)


@dataclasses.dataclass
class TfdsData:
    """A prepared tfds dataset as `TrainingData`: its `data.train_split`,
    `data.validation_split` and `data.test_split`."""

    builder: object  # the prepared tfds builder
    config: DataConfig
    workers: int = 1

    def __post_init__(self) -> None:
        self.image_shape = image_shape(self.builder, self.config)

    def split_name(self, split: str) -> str:
        return {"train": self.config.train_split, "validation": self.config.validation_split,
                "test": self.config.test_split}[split]

    def count(self, split: str) -> int:
        return num_examples(self.builder, self.split_name(split))

    def num_classes(self) -> int:
        return num_classes(self.builder)

    def class_names(self) -> list[str] | None:
        return class_names(self.builder)

    def split_labels(self, split: str) -> np.ndarray:
        return split_labels(self.builder, self.split_name(split))

    def resolved(self, config: DataConfig) -> DataConfig:
        return config

    def record(self) -> dict | None:
        return None

    def train(self, batch_size: int, *, binarize: bool, seed: int, labelled: np.ndarray | None = None,
              labelled_per_batch: int | None = None, start: int = 0) -> tf.data.Dataset:
        """Held in memory when one worker trains and the split fits `data.in_memory_max_mb`
        (`in_memory_training_dataset`), streamed otherwise (`training_dataset`)."""
        split = self.split_name("train")
        if self.count("train") < batch_size:
            raise DataError(f"split {split!r} has fewer examples than one batch of {batch_size}")
        options = dict(binarize=binarize, seed=seed, labelled=labelled, labelled_per_batch=labelled_per_batch,
                       start=start)
        if self.workers == 1 and in_memory_size_mb(self.builder, self.config, split) <= self.config.in_memory_max_mb:
            return in_memory_training_dataset(self.builder, self.config, split, batch_size, **options)
        return training_dataset(self.builder, self.config, split, batch_size, repeat=True, **options)

    def evaluation(self, split: str, batch_size: int, *, binarize: bool, seed: int,
                   limit: int | None = None) -> tf.data.Dataset:
        return evaluation_dataset(self.builder, self.config, self.split_name(split), batch_size,
                                  binarize=binarize, seed=seed, limit=limit)


# === A tfds dataset's pipelines ===
def get_builder(config: DataConfig):
    """The prepared tfds builder of `config`'s dataset (`pipelines.sources.datasets.prepared_builder`).

    Raises:
        DataError: the dataset is unknown, has no images, or cannot be prepared here.
    """
    return prepared_builder(config.source.dataset, config.source.data_dir, config.download)


def image_shape(builder, config: DataConfig) -> tuple[int, int, int]:
    """The (H, W, C) the model sees: the dataset's, or `config.image_size` with its C."""
    height, width, channels = builder.info.features["image"].shape
    if config.image_size is not None:
        height, width = config.image_size
    if height is None or width is None or channels is None:
        raise DataError(
            f"dataset {config.source.dataset!r} has images of varying size "
            f"{builder.info.features['image'].shape}; set data.image_size=[H,W] to resize them"
        )
    return int(height), int(width), int(channels)


def _decode(config: DataConfig, shape):
    def decode(example):
        image = example["image"]
        if config.image_size is not None:
            image = tf.cast(tf.image.resize(image, shape[:2]), tf.uint8)
        label = example.get("label", tf.constant(-1, tf.int64))
        return image, tf.cast(label, tf.int64)

    return decode


def dataset_class_names(config: DataConfig) -> list[str] | None:
    """`class_names` of `config.dataset` from its tfds builder's info, without preparing or
    reading the data; None when the builder cannot be made here (the export then numbers
    the classes). Own data: the names the run recorded (`config.class_names`)."""
    if config.own:
        return list(config.class_names) if config.class_names else None
    try:
        return class_names(tfds.builder(config.source.dataset, data_dir=config.source.data_dir))
    except Exception as err:  # an unknown or unreadable dataset: the names are a nicety
        log.warning("no class names for %r: %s", config.source.dataset, err)
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
                     labelled_per_batch: int | None = None, start: int = 0) -> tf.data.Dataset:
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
                            shuffle_buffer=config.shuffle_buffer, labelled_per_batch=labelled_per_batch,
                            start=start)


def in_memory_size_mb(builder, config: DataConfig, split: str) -> float:
    """MB of the split's decoded uint8 images."""
    height, width, channels = image_shape(builder, config)
    return num_examples(builder, split) * height * width * channels / 2**20


def in_memory_training_dataset(builder, config: DataConfig, split: str, batch_size: int, *,
                               binarize: bool, seed: int, labelled: np.ndarray | None = None,
                               labelled_per_batch: int | None = None, start: int = 0) -> tf.data.Dataset:
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
                             labelled_per_batch=labelled_per_batch, start=start)


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


