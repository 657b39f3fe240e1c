"""The batches every training data feeds (`pipelines.data.TrainingData`, tfds or own
files): shuffled batches streamed through a buffer, batches gathered by index from images
held in memory, fixed evaluation batches; each binarised by a stateless draw, and with
`data.labelled_share` a fixed number of labelled examples in every training batch.

A training stream is a function of its seed alone, and `start` begins it at that global
batch (a resumed run's optimizer step): the batches a resumed run sees are those the
killed run would have seen next, binarised the same. The skip happens before a batch is
gathered or binarised (held in memory it costs nothing; streamed, the skipped examples are
still read)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipelines.sources.spec import DataError


def _to_float(images):
    """uint8 0..255 -> float32 0..1; float32 images (own data streamed) pass unchanged."""
    if images.dtype == tf.float32:
        return images
    return tf.cast(images, tf.float32) / 255.0


def _binarize(x, seed):
    """A Bernoulli draw of each intensity in [0, 1], stateless: keyed by an int64 [2] seed."""
    noise = tf.random.stateless_uniform(tf.shape(x), seed=seed)
    return tf.cast(noise < x, tf.float32)


def shuffled_batches(ds: tf.data.Dataset, batch_size: int, *, binarize: bool, seed: int, repeat: bool,
                     shuffle_buffer: int, labelled_per_batch: int | None = None,
                     start: int = 0) -> tf.data.Dataset:
    """(image, label) examples (uint8 or float32 images) -> shuffled batches of (images in
    [0, 1], labels), each binarised anew with `binarize` (see `pipelines.data.training_dataset`).

    With `labelled_per_batch` L (`data.labelled_share`), the batches are repeated and each
    holds L labelled examples (label >= 0; the small labelled set is cached in memory and
    reshuffled on each of its passes) and `batch_size` - L unlabelled ones, rows mixed
    (`_mix_rows`).
    """
    if labelled_per_batch is not None:
        return _mixed_shuffled_batches(ds, batch_size, labelled_per_batch, binarize=binarize, seed=seed,
                                       shuffle_buffer=shuffle_buffer, start=start)
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

    ds = tf.data.Dataset.zip(ds, keys).skip(start)
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
                            binarize: bool, seed: int, shuffle_buffer: int, start: int) -> tf.data.Dataset:
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

    ds = tf.data.Dataset.zip(labelled, unlabelled, tf.data.Dataset.counter()).skip(start)
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def in_memory_batches(images, labels, batch_size: int, *, binarize: bool, seed: int,
                      labelled_per_batch: int | None = None, start: int = 0) -> tf.data.Dataset:
    """Repeated batches gathered by index from images held in memory ((N, H, W, C) uint8 or
    float32, (N,) int64 labels): a fresh permutation every epoch, fresh binarisations
    (see `pipelines.data.in_memory_training_dataset`).

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
                                        binarize=binarize, seed=seed, start=start)
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

    # Global batch `start` is batch start % steps of the data's epoch start // steps.
    ds = tf.data.Dataset.counter(start // steps).flat_map(epoch_batches).skip(start % steps)
    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _in_memory_mixed_batches(images: tf.Tensor, labels: tf.Tensor, batch_size: int, labelled_per_batch: int,
                             *, binarize: bool, seed: int, start: int) -> tf.data.Dataset:
    """`in_memory_batches` of a fixed number of labelled examples per batch."""
    known = labels.numpy() >= 0
    if known.all() or not known.any():
        raise DataError(f"a fixed labelled share of each batch needs labelled and unlabelled training "
                        f"images; these {len(known)} are all {'labelled' if known.any() else 'unlabelled'}")

    def passes(indices: np.ndarray, salt: int, first: int) -> tf.data.Dataset:
        """`indices` without end, in a fresh order (keyed by the seed and the pass) each
        pass, from the stream's element `first` on."""
        count = len(indices)
        indices = tf.constant(indices, tf.int64)

        def one_pass(number):
            key = tf.stack([tf.constant(seed, tf.int64), 2 * number + salt])
            order = tf.argsort(tf.random.stateless_uniform(tf.shape(indices), seed=key))
            return tf.data.Dataset.from_tensor_slices(tf.gather(indices, order))

        return tf.data.Dataset.counter(first // count).flat_map(one_pass).skip(first % count)

    unlabelled_per_batch = batch_size - labelled_per_batch
    labelled = passes(np.flatnonzero(known), 0, start * labelled_per_batch).batch(
        labelled_per_batch, drop_remainder=True)
    unlabelled = passes(np.flatnonzero(~known), 1, start * unlabelled_per_batch).batch(
        unlabelled_per_batch, drop_remainder=True)

    def gather(first, second, number):
        order_key, noise_key = _batch_keys(seed, number)
        index = _mix_rows(first, second, order_key)
        x = _to_float(tf.gather(images, index))
        if binarize:
            x = _binarize(x, noise_key)
        return x, tf.gather(labels, index)

    ds = tf.data.Dataset.zip(labelled, unlabelled, tf.data.Dataset.counter(start))
    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


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
