"""The input pipelines of a training run: the training, validation and test splits."""

from __future__ import annotations

import dataclasses
import sys

import tensorflow as tf

from pipelines import data, labelled
from pipelines.config import RunConfig


@dataclasses.dataclass
class Datasets:
    """The input pipelines of a run."""

    builder: object
    train: tf.data.Dataset  # repeated, shuffled global batches
    validation: tf.data.Dataset  # fixed batches
    steps_per_epoch: int
    labelled: dict | None = None  # semi-supervised: the labelled subset's record (labelled.json)


def resolve_model(config: RunConfig, builder) -> tuple[RunConfig, dict | None]:
    """The config with what the model takes from the data: the image shape, the number
    of classes (label-conditioned kinds) and M2's default alpha; and the record of the
    labelled subset when `data.labelled_per_class` is set (drawn by `train.seed`).

    M2's alpha (the weight of -log q(y|x) on each labelled example of the per-example
    mean) defaults to 0.1 * (N / N_labelled)^2: the mean classification loss over the
    labelled examples then weighs 0.1 * N / N_labelled against the mean ELBO. With every
    label it is the paper's alpha = 0.1 N; with few labels it is N / N_labelled times
    stronger, which measured better (`benchmarks/semi_supervised.py`, 100 labels per
    class, 120 s: test accuracy 0.70 with the paper's 6, 0.754 with 60, 0.766 with 600).
    """
    config = config.check_sections()
    model = config.model
    changes = {}
    shape = data.image_shape(builder, config.data)
    if shape != model.image_shape:
        changes["image_shape"] = shape
    classes = model.num_classes
    if model.labels_condition:
        classes = changes["num_classes"] = data.num_classes(builder)
    split = config.data.train_split
    count, record = data.num_examples(builder, split), None
    per_class = config.data.labelled_per_class
    if per_class is not None:
        labels = data.split_labels(builder, split)
        indices = labelled.select(labels, per_class, classes, config.train.seed)
        record = labelled.record(indices, labels, split=split, per_class=per_class, seed=config.train.seed)
    if model.kind == "m2" and model.alpha is None:
        changes["alpha"] = 0.1 * (count / (record["count"] if record else count)) ** 2
    if changes:
        config = dataclasses.replace(config, model=dataclasses.replace(model, **changes))
    return config, record


def load_datasets(config: RunConfig, workers: int = 1) -> tuple[RunConfig, Datasets]:
    """Prepares the data; returns the config with what the model takes from the data
    (`resolve_model`), and the training and validation pipelines (the training split
    held in memory when it fits `data.in_memory_max_mb` and one worker trains; tf.data
    streams and shards it otherwise). A semi-supervised run's training labels are -1
    outside the labelled subset."""
    builder = data.get_builder(config.data)
    config, record = resolve_model(config, builder)
    train_cfg = config.train
    global_batch = train_cfg.batch_size
    steps_per_epoch = train_cfg.steps_per_epoch or (
        data.num_examples(builder, config.data.train_split) // global_batch)
    if steps_per_epoch < 1:
        raise data.DataError(
            f"split {config.data.train_split!r} has fewer examples than one batch of {global_batch}")
    split = config.data.train_split
    mask = None
    if record is not None:
        mask = labelled.mask(data.num_examples(builder, split), record["indices"])
    if workers == 1 and data.in_memory_size_mb(builder, config.data, split) <= config.data.in_memory_max_mb:
        train_ds = data.in_memory_training_dataset(
            builder, config.data, split, global_batch, binarize=config.binarize, seed=train_cfg.seed,
            labelled=mask)
    else:
        train_ds = data.training_dataset(
            builder, config.data, split, global_batch,
            binarize=config.binarize, seed=train_cfg.seed, repeat=True, labelled=mask,
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    val_ds = data.evaluation_dataset(
        builder, config.data, config.data.validation_split, train_cfg.eval_batch_size,
        binarize=config.binarize, seed=train_cfg.seed + 1, limit=train_cfg.eval_examples,
    )
    return config, Datasets(builder, train_ds.with_options(options), val_ds, steps_per_epoch, record)


def test_dataset(config: RunConfig, datasets: Datasets) -> tuple[tf.data.Dataset, int]:
    """The test split's fixed batches and how many images they hold."""
    train_cfg = config.train
    test_ds = data.evaluation_dataset(
        datasets.builder, config.data, config.data.test_split, train_cfg.eval_batch_size,
        binarize=config.binarize, seed=train_cfg.seed + 2, limit=train_cfg.eval_examples,
    )
    count = min(data.num_examples(datasets.builder, config.data.test_split),
                train_cfg.eval_examples or sys.maxsize)
    return test_ds, count
