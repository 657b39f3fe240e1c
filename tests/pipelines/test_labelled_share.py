"""`data.labelled_share`: M2's training batches with a fixed number of labelled images, on
real Fashion-MNIST (tfds, held in memory or streamed) and on own .npy files; M2's default
alpha with a share; the configs refused; a short M2 run with `--labelled-share`."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from core.config import ConfigError
from pipelines import cli, data
from pipelines.batches import in_memory_batches
from pipelines.config import DataConfig, RunConfig, resolve_config
from pipelines.train import load_datasets
from pipelines.train import cli as train_cli
from pipelines.train.inputs import resolve_model

TRAIN_IMAGES = 54_000  # Fashion-MNIST's training images in the default data.train_split (train[:90%])


def config_of(*overrides) -> RunConfig:
    config = RunConfig()
    for assignment in ("model.kind=m2", "model.latent_dim=4", "model.hidden_units=[32]",
                       "data.binarize=false", "train.eval_examples=100", "train.eval_batch_size=100",
                       *overrides):
        config = config.override(assignment)
    return config.check_sections()


def batches(datasets, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in datasets.train(0).take(count)]


def assert_batches_hold_the_labelled_subset(seen, record, subset_images, labelled_per_batch, passes):
    """Each batch: exactly `labelled_per_batch` labelled rows, the rest -1; every labelled row
    is an image of the recorded subset with its recorded label; over the batches (a whole
    number of passes over the subset) every recorded index appears `passes` times; and the
    labelled rows are not all at the head of every batch."""
    index_of = {}
    for index, image in zip(record["indices"], subset_images):
        index_of.setdefault(image.tobytes(), []).append(index)
    label_of = dict(zip(record["indices"], record["labels"]))
    counts, mixed = Counter(), False
    for images, labels in seen:
        rows = np.flatnonzero(labels != -1)
        assert len(rows) == labelled_per_batch
        assert set(np.unique(labels[labels != -1])) <= set(range(10))
        mixed |= not np.array_equal(rows, np.arange(labelled_per_batch))
        for row in rows:
            (index,) = index_of[np.round(images[row] * 255).astype(np.uint8).tobytes()]
            assert labels[row] == label_of[index]
            counts[index] += 1
    assert counts == {index: passes for index in record["indices"]}
    assert mixed


# === The tfds path ===
@pytest.mark.parametrize("in_memory_max_mb", [1024, 0])  # gathered from memory, or streamed
def test_every_tfds_batch_holds_the_share_of_labelled_images_from_the_recorded_subset(tfds_dir, in_memory_max_mb):
    config = config_of(f'data.data_dir="{tfds_dir}"', 'data.train_split="train[:5000]"',
                       "data.labelled_per_class=5", "data.labelled_share=0.3", "train.batch_size=100",
                       f"data.in_memory_max_mb={in_memory_max_mb}")
    assert config.labelled_per_batch == 30
    config, datasets = load_datasets(config)
    assert datasets.steps_per_epoch == 50  # an epoch stays one pass of the split: 5000 // 100
    record = datasets.labelled
    assert record["count"] == 50
    whole = datasets.data.builder.as_dataset(split="train[:5000]", shuffle_files=False, batch_size=-1)
    subset_images = whole["image"].numpy()[record["indices"]]
    seen = batches(datasets, 10)  # 300 labelled rows: six passes over the 50 labelled images
    assert all(images.shape == (100, 28, 28, 1) for images, _ in seen)
    assert_batches_hold_the_labelled_subset(seen, record, subset_images, 30, passes=6)


@pytest.mark.parametrize("in_memory_max_mb", [1024, 0])
def test_the_repeated_labelled_images_are_binarised_anew_each_time(tfds_dir, in_memory_max_mb):
    # One labelled image per class and 10 labelled rows per batch: each batch holds each once.
    config = config_of(f'data.data_dir="{tfds_dir}"', 'data.train_split="train[:2000]"',
                       "data.labelled_per_class=1", "data.labelled_share=0.5", "train.batch_size=20",
                       "data.binarize=true", f"data.in_memory_max_mb={in_memory_max_mb}")
    config, datasets = load_datasets(config)
    by_class = []
    for images, labels in batches(datasets, 4):
        rows = np.flatnonzero(labels != -1)
        assert sorted(labels[rows].tolist()) == list(range(10))
        assert set(np.unique(images)) <= {0.0, 1.0}
        by_class.append(images[rows][np.argsort(labels[rows])])
    for earlier, later in zip(by_class, by_class[1:]):
        assert all(not np.array_equal(a, b) for a, b in zip(earlier, later))


# === The own-data path ===
@pytest.fixture(scope="module")
def npy_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npy")
    rng = np.random.default_rng(4)
    np.save(folder / "x.npy", rng.integers(0, 256, size=(200, 8, 8), dtype=np.uint8))
    np.save(folder / "y.npy", np.arange(200) % 4)
    return folder


@pytest.mark.parametrize("in_memory_max_mb", [1024, 0])
def test_every_own_data_batch_holds_the_share_of_labelled_images_from_the_recorded_subset(npy_files, in_memory_max_mb):
    config = config_of('data.source="npy"', f'data.paths=["{npy_files / "x.npy"}"]',
                       f'data.labels_file="{npy_files / "y.npy"}"', "data.labelled_per_class=3",
                       "data.labelled_share=0.25", "train.batch_size=16",
                       f"data.in_memory_max_mb={in_memory_max_mb}")
    config, datasets = load_datasets(config)
    own = datasets.data
    assert (own.images is None) == (in_memory_max_mb == 0)
    assert datasets.steps_per_epoch == own.count("train") // 16
    record = datasets.labelled
    assert record["count"] == 12
    source = np.load(npy_files / "x.npy")[..., None]
    subset_images = source[own.splits["train"][record["indices"]]]
    np.testing.assert_array_equal(np.load(npy_files / "y.npy")[own.splits["train"][record["indices"]]],
                                  record["labels"])
    seen = batches(datasets, 9)  # 36 labelled rows: three passes over the 12 labelled images
    assert_batches_hold_the_labelled_subset(seen, record, subset_images, 4, passes=3)


def test_held_images_all_labelled_cannot_fill_a_share():
    images = np.zeros((40, 4, 4, 1), np.uint8)
    with pytest.raises(data.DataError, match="all labelled"):
        in_memory_batches(images, np.arange(40) % 2, 8, binarize=False, seed=0, labelled_per_batch=4)


# === M2's alpha ===
def test_the_default_alpha_with_a_share_is_a_tenth_of_n_over_n_labelled_over_the_share(tfds_dir):
    tfds_data = data.open_training_data(DataConfig.from_dict({"data_dir": tfds_dir}))
    base = (f'data.data_dir="{tfds_dir}"', "data.labelled_per_class=5")
    shared, _ = resolve_model(config_of(*base, "data.labelled_share=0.25"), tfds_data)
    assert shared.model.m2.alpha == pytest.approx(0.1 * (TRAIN_IMAGES / 50) / 0.25)
    natural, _ = resolve_model(config_of(*base), tfds_data)
    assert natural.model.m2.alpha == 0.1 * (TRAIN_IMAGES / 50) ** 2  # today's value, unchanged
    # The general formula at the natural share is today's.
    assert natural.model.m2.alpha == pytest.approx(0.1 * (TRAIN_IMAGES / 50) / (50 / TRAIN_IMAGES))
    explicit, _ = resolve_model(config_of(*base, "data.labelled_share=0.25", "model.alpha=3"), tfds_data)
    assert explicit.model.m2.alpha == 3.0


# === Configs refused ===
@pytest.mark.parametrize("overrides, message", [
    (["model.kind=vae", "data.labelled_share=0.5"], "is only used by model.kind='m2'"),
    (["model.kind=m2", "data.labelled_share=0.5"], "needs data.labelled_per_class"),
    (["model.kind=m2", "data.labelled_per_class=5", "data.labelled_share=0"], r"must be in \(0, 1\)"),
    (["model.kind=m2", "data.labelled_per_class=5", "data.labelled_share=1"], r"must be in \(0, 1\)"),
    (["model.kind=m2", "data.labelled_per_class=5", "data.labelled_share=0.01", "train.batch_size=20"],
     "must leave labelled and unlabelled examples in every batch of train.batch_size=20"),
    (["model.kind=m2", "data.labelled_per_class=5", "data.labelled_share=0.99", "train.batch_size=20"],
     r"must leave labelled and unlabelled examples in every batch of train.batch_size=20 \(it gives 20 "
     r"labelled\), got 0.99"),
])
def test_a_bad_labelled_share_is_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=f"DataConfig.labelled_share {message}"):
        resolve_config(None, overrides)


def test_a_share_set_before_labelled_per_class_is_accepted():
    config = resolve_config(None, ["model.kind=m2", "data.labelled_share=0.5", "data.labelled_per_class=5"])
    assert (config.data.labelled_share, config.labelled_per_batch) == (0.5, 64)


def test_the_cli_flag_sets_the_share_and_refuses_it_without_labels(tmp_path, capsys):
    args = cli.build_parser().parse_args(["train", "--workdir", "w", "--kind", "m2", "--labelled-per-class", "10",
                                          "--labelled-share", "0.5"])
    assert train_cli.train_config(args).data.labelled_share == 0.5
    code = cli.main(["train", "--workdir", str(tmp_path / "run"), "--kind", "m2", "--labelled-share", "0.5"])
    assert code == 2
    assert "DataConfig.labelled_share needs data.labelled_per_class" in capsys.readouterr().err


# === A short run ===
@pytest.mark.slow
def test_a_short_m2_run_with_a_labelled_share_trains_on_half_labelled_batches(tfds_dir, tmp_path):
    workdir = tmp_path / "run"
    code = cli.main(["train", "--workdir", str(workdir), "--data-dir", tfds_dir, "--kind", "m2",
                     "--labelled-per-class", "20", "--labelled-share", "0.5", "--batch-size", "64",
                     "--epochs", "2", "--latent-dim", "4", "model.hidden_units=[64]", "train.steps_per_epoch=10",
                     "train.iwae_k=5", "train.eval_examples=200", "train.eval_batch_size=100",
                     "train.tensorboard=false"])
    assert code == 0
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 20 and np.isfinite(metrics["test_nelbo"])
    assert 0 <= metrics["test_accuracy"] <= 1
    history = json.loads((workdir / "history.json").read_text())["metrics"]
    assert history["labelled"] == [0.5, 0.5]  # 32 of every 64 training images were labelled
    config = RunConfig.load(workdir / "config.json")
    assert config.data.labelled_share == 0.5
    assert config.model.m2.alpha == pytest.approx(0.1 * (TRAIN_IMAGES / 200) / 0.5)
