"""An exact resume: the training stream restarts at the checkpointed step, the training
noise is a function of (seed, step, replica), and the model's noise generators and early
stopping are checkpointed, so a run stopped mid-epoch and resumed ends bit for bit where an
uninterrupted run does. (The SIGKILL of a `vae train` process, on one device and on two
CPU replicas: `tests/pipelines/test_distribute.py`.)"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.batches import in_memory_batches, shuffled_batches
from pipelines.config import RunConfig
from pipelines.distribute import make_cluster
from pipelines.train.inputs import load_datasets
from pipelines.train.run import fit

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (50, 4, 4, 1), dtype=np.uint8)
# 7 labelled images (label >= 0), the other 43 unlabelled (-1).
LABELS = np.where(np.arange(50) % 7 == 0, np.arange(50) % 3, -1).astype("int64")
BATCH = 8  # 6 batches to a pass over the 50 images


def examples():
    return tf.data.Dataset.from_tensor_slices((IMAGES, LABELS))


STREAMS = {
    "in memory": lambda start: in_memory_batches(IMAGES, LABELS, BATCH, binarize=True, seed=3, start=start),
    "in memory, 3 labelled per batch": lambda start: in_memory_batches(
        IMAGES, LABELS, BATCH, binarize=True, seed=3, labelled_per_batch=3, start=start),
    "streamed": lambda start: shuffled_batches(examples(), BATCH, binarize=True, seed=3, repeat=True,
                                               shuffle_buffer=20, start=start),
    "streamed, 3 labelled per batch": lambda start: shuffled_batches(
        examples(), BATCH, binarize=True, seed=3, repeat=True, shuffle_buffer=20, labelled_per_batch=3,
        start=start),
}


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("start", [1, 6, 13])
def test_a_stream_started_at_batch_n_is_the_whole_streams_batches_from_n_on(name, start):
    """Across passes over the data (6 batches each) and, with 3 labelled per batch, across
    passes over the 7 labelled images: the same images, labels and binarisations."""
    stream = STREAMS[name]
    whole = list(stream(0).take(start + 10).as_numpy_iterator())[start:]
    resumed = list(stream(start).take(10).as_numpy_iterator())
    for (x, y), (x_resumed, y_resumed) in zip(whole, resumed, strict=True):
        np.testing.assert_array_equal(x_resumed, x)
        np.testing.assert_array_equal(y_resumed, y)
    # Not one batch repeated: the stream moves on.
    assert not np.array_equal(whole[0][0], whole[1][0])


def m2_config(tfds_dir) -> RunConfig:
    """A small M2 with the classifier's random shift (a layer's own noise generator), a
    labelled share of every batch, a decaying learning rate, a KL warm-up and early stopping
    on the validation split."""
    config = RunConfig()
    for assignment in (f'data.data_dir="{tfds_dir}"', 'data.train_split="train[:3000]"', "model.kind=\"m2\"",
                       "data.labelled_per_class=10", "data.labelled_share=0.25", "model.hidden_units=[32]",
                       "model.latent_dim=4", "model.m2.classifier_shift=2", "train.batch_size=32",
                       "train.epochs=3", "train.steps_per_epoch=20", "train.checkpoint_every_steps=10",
                       "train.lr_schedule=\"cosine\"", "train.kl_warmup_fraction=0.5",
                       "train.early_stopping_patience=2", "train.eval_examples=64", "train.tensorboard=false"):
        config = config.override(assignment)
    return config


def seeded_fit(config, datasets, cluster, workdir):
    """`fit` as `vae train` calls it: after seeding Python, NumPy and TensorFlow."""
    keras.utils.set_random_seed(config.train.seed)
    return fit(config, datasets, cluster, workdir, verbose=0)


def test_an_m2_run_crashed_mid_epoch_resumes_to_the_uninterrupted_runs_weights(tfds_dir, tmp_path):
    config, datasets = load_datasets(m2_config(tfds_dir))
    cluster = make_cluster("default", 0)
    whole, _, _ = seeded_fit(config, datasets, cluster, tmp_path / "whole")

    # The first attempt's data run out at global batch 35 (mid-epoch 2, in the call of
    # steps 31-40): it dies with the checkpoint of step 30 on disk.
    cut = dataclasses.replace(datasets, train=lambda start: datasets.train(start).take(35 - start))
    with pytest.raises(tf.errors.OutOfRangeError):
        seeded_fit(config, cut, cluster, tmp_path / "resumed")
    resumed, history, trainer = seeded_fit(config, datasets, cluster, tmp_path / "resumed")

    assert int(resumed.optimizer.iterations.numpy()) == int(whole.optimizer.iterations.numpy()) == 60
    assert history.completed_epochs == 3
    assert trainer.early_stopping is not None
    for a, b in zip(resumed.weights, whole.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # The classifier's shift draws from its own generator, restored with the checkpoint.
    state = resumed.classifier_shift.generator.state.numpy()
    np.testing.assert_array_equal(state, whole.classifier_shift.generator.state.numpy())
    assert np.abs(state).sum() > 0  # it advanced


def test_a_checkpoint_without_the_noise_and_early_stopping_state_still_resumes(tmp_path):
    """A checkpoint of the layout written before the model's other state and early
    stopping joined it (model, optimizer, progress, seconds) restores the model and the
    progress; early stopping starts afresh."""
    from model import ModelConfig, build_model
    from pipelines.optimizers import FusedAdam
    from pipelines.train.trainer import Trainer
    from pipelines.workdir import CHECKPOINT_DIR

    def tiny():
        model = build_model(ModelConfig(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(16,)), seed=0)
        model.build()
        model.compile(optimizer=FusedAdam(1e-3))
        return model

    old = tiny()
    old.optimizer.build(old.trainable_variables)
    old.optimizer.iterations.assign(70)
    progress = tf.Variable([1, 20], dtype=tf.int64)
    seconds = tf.Variable(12.5, dtype=tf.float64)
    layout = tf.train.Checkpoint(model=old, optimizer=old.optimizer, progress=progress, train_seconds=seconds)
    tf.train.CheckpointManager(layout, str(tmp_path / CHECKPOINT_DIR), max_to_keep=1).save(checkpoint_number=70)

    fresh = tiny()
    trainer = Trainer(fresh, make_cluster("default", 0), global_batch=32, workdir=tmp_path, tensorboard=False,
                      patience=2)
    assert trainer.restore() == (1, 20)
    assert int(fresh.optimizer.iterations.numpy()) == 70 and float(trainer.seconds.numpy()) == 12.5
    for a, b in zip(fresh.trainable_variables, old.trainable_variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert trainer.early_stopping.best_weights() is None  # no epoch validated yet
