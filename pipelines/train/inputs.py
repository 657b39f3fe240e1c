"""The input pipelines of a training run: the training, validation and test splits, of a
tfds dataset (`pipelines.data`) or of the user's own files (`pipelines.own_data`)."""

from __future__ import annotations

import dataclasses
import sys

import tensorflow as tf

from pipelines import data, labelled
from pipelines.config import RunConfig
from pipelines.own_data import OwnData, open_own_data


@dataclasses.dataclass
class Datasets:
    """The input pipelines of a run."""

    builder: object  # the tfds builder; None for own data
    train: tf.data.Dataset  # repeated, shuffled global batches
    validation: tf.data.Dataset  # fixed batches
    steps_per_epoch: int
    labelled: dict | None = None  # semi-supervised: the labelled subset's record (labelled.json)
    own: OwnData | None = None  # own data, opened and split
    class_names: list[str] | None = None  # the classes' names, exported with the model

    @property
    def source(self) -> dict | None:
        """Own data's record for the workdir's source.json (files, hashes, splits); None for tfds."""
        return self.own.record() if self.own is not None else None


def resolve_model(config: RunConfig, builder=None, own: OwnData | None = None) -> tuple[RunConfig, dict | None]:
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
    0.70 with the paper's 6, 0.754 with 60, 0.766 with 600). An explicit `model.alpha`
    is kept.

    Raises:
        DataError: a `data.labelled_share` but every training image is labelled.
    """
    config = config.check_sections()
    model = config.model
    changes = {}
    if own is not None:
        names = own.class_names()
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, class_names=tuple(names) if names else None, fingerprint=own.fingerprint()))
        shape, split, count = own.image_shape, "train", own.count("train")
    else:
        shape, split = data.image_shape(builder, config.data), config.data.train_split
        count = data.num_examples(builder, split)
    if shape != model.image_shape:
        changes["image_shape"] = shape
    classes = model.num_classes
    if model.labels_condition:
        classes = changes["num_classes"] = own.num_classes() if own is not None else data.num_classes(builder)
    record = None
    per_class = config.data.labelled_per_class
    if per_class is not None:
        if own is not None:
            own.num_classes()
        labels = own.split_labels(split) if own is not None else data.split_labels(builder, split)
        indices = labelled.select(labels, per_class, classes, config.train.seed)
        record = labelled.record(indices, labels, split=split, per_class=per_class, seed=config.train.seed)
    share = config.data.labelled_share
    if share is not None and record["count"] == count:
        raise data.DataError(f"data.labelled_share={share}: all {count} training images are labelled "
                             f"(data.labelled_per_class={per_class}), none is left to fill the rest of a batch")
    if model.kind == "m2" and model.alpha is None:
        ratio = count / (record["count"] if record else count)
        changes["alpha"] = 0.1 * ratio ** 2 if share is None else 0.1 * ratio / share
    if changes:
        config = dataclasses.replace(config, model=dataclasses.replace(model, **changes))
    return config, record


def load_datasets(config: RunConfig, workers: int = 1) -> tuple[RunConfig, Datasets]:
    """Prepares the data; returns the config with what the model takes from the data
    (`resolve_model`), and the training and validation pipelines (the training split
    held in memory when it fits `data.in_memory_max_mb` and one worker trains; tf.data
    streams and shards it otherwise). A semi-supervised run's training labels are -1
    outside the labelled subset; with `data.labelled_share` every training batch holds
    `config.labelled_per_batch` of the labelled ones. An epoch stays N // batch steps."""
    if config.data.own:
        return _own_datasets(config, workers)
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
            labelled=mask, labelled_per_batch=config.labelled_per_batch)
    else:
        train_ds = data.training_dataset(
            builder, config.data, split, global_batch,
            binarize=config.binarize, seed=train_cfg.seed, repeat=True, labelled=mask,
            labelled_per_batch=config.labelled_per_batch,
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    val_ds = data.evaluation_dataset(
        builder, config.data, config.data.validation_split, train_cfg.eval_batch_size,
        binarize=config.binarize, seed=train_cfg.seed + 1, limit=train_cfg.eval_examples,
    )
    return config, Datasets(builder, train_ds.with_options(options), val_ds, steps_per_epoch, record,
                            class_names=data.class_names(builder))


def _own_datasets(config: RunConfig, workers: int) -> tuple[RunConfig, Datasets]:
    """`load_datasets` of own data: held in memory when it fits, streamed otherwise."""
    own = open_own_data(config.data, workers)
    config, record = resolve_model(config, own=own)
    train_cfg = config.train
    steps_per_epoch = train_cfg.steps_per_epoch or own.count("train") // train_cfg.batch_size
    mask = labelled.mask(own.count("train"), record["indices"]) if record is not None else None
    train_ds = own.train(train_cfg.batch_size, binarize=config.binarize, seed=train_cfg.seed,
                         labelled=mask, shuffle_buffer=config.data.shuffle_buffer,
                         labelled_per_batch=config.labelled_per_batch)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    val_ds = own.evaluation("validation", train_cfg.eval_batch_size, binarize=config.binarize,
                            seed=train_cfg.seed + 1, limit=train_cfg.eval_examples)
    return config, Datasets(None, train_ds.with_options(options), val_ds, max(steps_per_epoch, 1), record,
                            own=own, class_names=own.class_names())


def test_dataset(config: RunConfig, datasets: Datasets) -> tuple[tf.data.Dataset, int]:
    """The test split's fixed batches and how many images they hold."""
    train_cfg = config.train
    if datasets.own is not None:
        test_ds = datasets.own.evaluation("test", train_cfg.eval_batch_size, binarize=config.binarize,
                                          seed=train_cfg.seed + 2, limit=train_cfg.eval_examples)
        return test_ds, min(datasets.own.count("test"), train_cfg.eval_examples or sys.maxsize)
    test_ds = data.evaluation_dataset(
        datasets.builder, config.data, config.data.test_split, train_cfg.eval_batch_size,
        binarize=config.binarize, seed=train_cfg.seed + 2, limit=train_cfg.eval_examples,
    )
    count = min(data.num_examples(datasets.builder, config.data.test_split),
                train_cfg.eval_examples or sys.maxsize)
    return test_ds, count


def training_images(config: RunConfig, datasets: Datasets, batch_size: int) -> tf.data.Dataset:
    """The training split's images in a fixed order, not binarised: batches of (images, labels)."""
    if datasets.own is not None:
        return datasets.own.evaluation("train", batch_size, binarize=False, seed=config.train.seed)
    return data.evaluation_dataset(datasets.builder, config.data, config.data.train_split, batch_size,
                                   binarize=False, seed=config.train.seed)
