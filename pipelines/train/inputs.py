"""The input pipelines of a training run: the training, validation and test splits of its
data (`pipelines.data.TrainingData`: a tfds dataset or the user's own files)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

import tensorflow as tf

from model import kinds
from pipelines import labelled
from pipelines.config import RunConfig
from pipelines.data import DataError, TrainingData, open_training_data


@dataclasses.dataclass
class Datasets:
    """The input pipelines of a run."""

    data: TrainingData  # the opened data (tfds or own files)
    # start -> repeated, shuffled global batches from global batch `start` on (a resumed
    # run's optimizer step): the stream is the same whatever the start.
    train: Callable[[int], tf.data.Dataset]
    validation: tf.data.Dataset  # fixed batches
    steps_per_epoch: int
    labelled: dict | None = None  # semi-supervised: the labelled subset's record (labelled.json)

    @property
    def source(self) -> dict | None:
        """Own data's record for the workdir's source.json (files, hashes, splits); None for tfds."""
        return self.data.record()

    @property
    def class_names(self) -> list[str] | None:
        """The classes' names, exported with the model."""
        return self.data.class_names()


def resolve_model(config: RunConfig, data: TrainingData) -> tuple[RunConfig, dict | None]:
    """The config with what the model takes from the data: the image shape, the number
    of classes (label-conditioned kinds) and M2's default alpha; and the record of the
    labelled subset when `data.labelled_per_class` is set (drawn by `train.seed`).

    M2's alpha (the weight of -log q(y|x) on each labelled example of the per-example
    mean) defaults to 0.1 * (N / N_labelled) / s, s the labelled share of a batch: the
    mean classification loss over the labelled examples then weighs 0.1 * N / N_labelled
    against the mean ELBO. Without `data.labelled_share`, s = N_labelled / N (the natural
    proportion) and alpha = 0.1 * (N / N_labelled)^2. With every label it is the paper's
    alpha = 0.1 N; with few labels it is N / N_labelled times stronger, which measured
    better (`benchmarks/semi_supervised.py`, 100 labels per class, 120 s: test accuracy
    0.70 with the paper's 6, 0.754 with 60, 0.766 with 600). An explicit `model.m2.alpha`
    is kept.

    Raises:
        DataError: a `data.labelled_share` but every training image is labelled, or a
            label-conditioned kind or `data.labelled_per_class` on images without labels.
    """
    config = config.check_sections()
    config = dataclasses.replace(config, data=data.resolved(config.data))
    model = config.model
    changes = {}
    shape, count = data.image_shape, data.count("train")
    if shape != model.image_shape:
        changes["image_shape"] = shape
    classes = model.num_classes
    if model.labels_condition:
        classes = changes["num_classes"] = data.num_classes()
    record = None
    per_class = config.data.labelled_per_class
    if per_class is not None:
        labels = data.split_labels("train")
        indices = labelled.select(labels, per_class, classes, config.train.seed)
        record = labelled.record(indices, labels, split=data.split_name("train"), per_class=per_class,
                                 seed=config.train.seed)
    share = config.data.labelled_share
    if share is not None and record["count"] == count:
        raise DataError(f"data.labelled_share={share}: all {count} training images are labelled "
                        f"(data.labelled_per_class={per_class}), none is left to fill the rest of a batch")
    if kinds.lookup(model.kind).semi_supervised and model.m2.alpha is None:
        ratio = count / (record["count"] if record else count)
        alpha = 0.1 * ratio ** 2 if share is None else 0.1 * ratio / share
        changes["m2"] = dataclasses.replace(model.m2, alpha=alpha)
    if changes:
        config = dataclasses.replace(config, model=dataclasses.replace(model, **changes))
    return config, record


def load_datasets(config: RunConfig, workers: int = 1) -> tuple[RunConfig, Datasets]:
    """Opens the data (`open_training_data`); returns the config with what the model takes
    from the data (`resolve_model`), and the training and validation pipelines (the
    training split held in memory when it fits `data.in_memory_max_mb` and one worker
    trains; tf.data streams and shards it otherwise; the training one as a function of
    the global batch it starts at). A semi-supervised run's training labels are -1 outside
    the labelled subset; with `data.labelled_share` every training batch holds
    `config.labelled_per_batch` of the labelled ones. An epoch stays N // batch steps."""
    data = open_training_data(config.data, workers)
    config, record = resolve_model(config, data)
    train_cfg = config.train
    mask = labelled.mask(data.count("train"), record["indices"]) if record is not None else None
    steps_per_epoch = train_cfg.steps_per_epoch or data.count("train") // train_cfg.batch_size
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA

    def train_batches(start: int = 0) -> tf.data.Dataset:
        return data.train(train_cfg.batch_size, binarize=config.binarize, seed=train_cfg.seed, labelled=mask,
                          labelled_per_batch=config.labelled_per_batch, start=start).with_options(options)

    val_ds = data.evaluation("validation", train_cfg.eval_batch_size, binarize=config.binarize,
                             seed=train_cfg.seed + 1, limit=train_cfg.eval_examples)
    return config, Datasets(data, train_batches, val_ds, steps_per_epoch, record)


def test_dataset(config: RunConfig, datasets: Datasets) -> tuple[tf.data.Dataset, int]:
    """The test split's fixed batches and how many images they hold."""
    train_cfg = config.train
    test_ds = datasets.data.evaluation("test", train_cfg.eval_batch_size, binarize=config.binarize,
                                       seed=train_cfg.seed + 2, limit=train_cfg.eval_examples)
    return test_ds, min(datasets.data.count("test"), train_cfg.eval_examples or sys.maxsize)


def training_images(config: RunConfig, datasets: Datasets, batch_size: int) -> tf.data.Dataset:
    """The training split's images in a fixed order, not binarised: batches of (images, labels)."""
    return datasets.data.evaluation("train", batch_size, binarize=False, seed=config.train.seed)
