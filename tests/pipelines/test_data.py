"""Data pipelines on the real Fashion-MNIST, prepared offline from the Debian package."""

import gzip

import numpy as np
import pytest

from pipelines import data
from pipelines.config import DataConfig


@pytest.fixture(scope="module")
def builder(tfds_dir):
    return data.get_builder(DataConfig.from_dict({"data_dir": tfds_dir}))


def idx_split(prefix):
    """The Debian package's images and labels of one split, read with NumPy."""
    folder, _ = data.LOCAL_SOURCES["fashion_mnist"]
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def by_image(images, labels):
    return sorted((image.tobytes(), int(label)) for image, label in zip(images, labels))


def test_prepared_offline_as_the_standard_tfds_dataset(builder):
    assert builder.info.name == "fashion_mnist"
    assert str(builder.info.version) == "3.0.1"
    assert builder.info.splits["train"].num_examples == 60_000
    assert builder.info.splits["test"].num_examples == 10_000
    # The test split holds exactly the Debian package's images with their labels
    # (tfds stores them in its own shuffled order).
    examples = builder.as_dataset(split="test", shuffle_files=False, batch_size=-1)
    prepared = by_image(examples["image"].numpy(), examples["label"].numpy())
    assert prepared == by_image(*idx_split("t10k"))


def test_training_batches_are_dynamically_binarised(builder, tfds_dir):
    config = DataConfig.from_dict({"data_dir": tfds_dir, "train_split": "train[:512]", "shuffle_buffer": 1})
    ds = data.training_dataset(builder, config, config.train_split, 256, binarize=True, seed=0)
    first_epoch = [x.numpy() for x, _ in ds]
    second_epoch = [x.numpy() for x, _ in ds]
    x = first_epoch[0]
    assert x.shape == (256, 28, 28, 1) and x.dtype == np.float32
    assert set(np.unique(x)) <= {0.0, 1.0}
    # Same images (shuffle_buffer=1), a fresh Bernoulli draw each time they are seen.
    assert not np.array_equal(first_epoch[0], second_epoch[0])
    grey = idx_split("train")[0].astype(np.float32) / 255
    np.testing.assert_allclose(np.concatenate(first_epoch).mean(), grey.mean(), atol=0.02)


def test_in_memory_epochs_are_fresh_permutations(builder, tfds_dir):
    config = DataConfig.from_dict({"data_dir": tfds_dir})
    split = "train[:1000]"
    whole = builder.as_dataset(split=split, shuffle_files=False, batch_size=-1)
    known = {image.tobytes(): int(label) for image, label in
             zip(whole["image"].numpy(), whole["label"].numpy())}
    ds = data.in_memory_training_dataset(builder, config, split, 300, binarize=False, seed=3)
    batches = [(x.numpy(), y.numpy()) for x, y in ds.take(6)]  # 2 epochs of 3 batches
    epochs = []
    for epoch in range(2):
        keys = [(np.round(image * 255).astype(np.uint8).tobytes(), int(label))
                for x, y in batches[3 * epoch:3 * epoch + 3] for image, label in zip(x, y)]
        assert len(keys) == 900 and len({k for k, _ in keys}) == 900  # no repeats, 100 dropped
        assert all(known[k] == label for k, label in keys)  # real examples, with their labels
        epochs.append([k for k, _ in keys])
    assert epochs[0] != epochs[1]
    again = data.in_memory_training_dataset(builder, config, split, 300, binarize=False, seed=3)
    np.testing.assert_array_equal(next(iter(again))[0].numpy(), batches[0][0])


def test_in_memory_batches_are_dynamically_binarised(builder, tfds_dir):
    config = DataConfig.from_dict({"data_dir": tfds_dir})
    ds = data.in_memory_training_dataset(builder, config, "train[:512]", 512, binarize=True, seed=0)
    first, second = [x.numpy() for x, _ in ds.take(2)]  # the same 512 images, two epochs
    assert first.shape == (512, 28, 28, 1) and first.dtype == np.float32
    assert set(np.unique(first)) <= {0.0, 1.0}
    assert not np.array_equal(np.sort(first.reshape(512, -1), 0), np.sort(second.reshape(512, -1), 0))
    grey = idx_split("train")[0].astype(np.float32) / 255
    np.testing.assert_allclose(first.mean(), grey.mean(), atol=0.02)


def test_grey_batches_keep_labels(builder, tfds_dir):
    config = DataConfig.from_dict({"data_dir": tfds_dir})
    ds = data.training_dataset(builder, config, "train[:300]", 100, binarize=False, seed=0)
    x, y = next(iter(ds))
    x = x.numpy()
    assert 0.0 <= x.min() and x.max() <= 1.0 and len(np.unique(x)) > 2
    assert y.shape == (100,) and set(y.numpy()) <= set(range(10))


def test_evaluation_batches_are_fixed(builder, tfds_dir):
    config = DataConfig.from_dict({"data_dir": tfds_dir})
    ds = data.evaluation_dataset(builder, config, "test", 250, binarize=True, seed=5, limit=500)
    a = np.concatenate([x.numpy() for x, _ in ds])
    b = np.concatenate([x.numpy() for x, _ in ds])
    assert a.shape == (500, 28, 28, 1)
    np.testing.assert_array_equal(a, b)
    assert np.concatenate([y.numpy() for _, y in ds]).dtype == np.int64


def test_resizing(builder, tfds_dir):
    config = DataConfig.from_dict({"data_dir": tfds_dir, "image_size": [16, 20]})
    assert data.image_shape(builder, config) == (16, 20, 1)
    x, _ = next(iter(data.evaluation_dataset(builder, config, "test", 4, binarize=False, seed=0, limit=4)))
    assert x.shape == (4, 16, 20, 1)


def test_unknown_dataset_is_named(tmp_path):
    with pytest.raises(data.DataError, match="unknown dataset 'fashion_mnistt'"):
        data.get_builder(DataConfig.from_dict({"dataset": "fashion_mnistt", "data_dir": str(tmp_path)}))


def test_dataset_without_images_is_refused(tmp_path):
    with pytest.raises(data.DataError, match="no 'image' feature"):
        data.get_builder(DataConfig.from_dict({"dataset": "glue", "data_dir": str(tmp_path)}))


def test_missing_dataset_fails_offline_with_advice(tmp_path):
    with pytest.raises(data.DataError, match="--download") as err:
        data.get_builder(DataConfig.from_dict({"dataset": "mnist", "data_dir": str(tmp_path)}))
    assert "--data-dir" in str(err.value) and "not prepared" in str(err.value)


def test_unknown_split_is_named(builder, tfds_dir):
    with pytest.raises(data.DataError, match="validation"):
        data.num_examples(builder, "validation")
