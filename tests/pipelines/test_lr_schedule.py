"""The training schedule: the learning rate decayed to zero over the run (resumed at the
right point), the decoder's output bias from the training data, and the switch to the
k-sample objective for the last part of a run."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from core.config import ConfigError
from model import VAE, ModelConfig
from model.config import DensityConfig
from pipelines.config import RunConfig, TrainConfig
from pipelines.distribute import make_cluster
from pipelines.optimizers import FusedAdam
from pipelines.train.inputs import load_datasets
from pipelines.train.run import build_model, init_output_bias
from pipelines.train.trainer import Trainer, lr_factor

BASE_LR = 1e-3


def tiny_model(cls=VAE, train_samples: int = 1, **config):
    """A built, compiled tiny model of k = `train_samples` and these other settings."""
    keras.utils.set_random_seed(0)
    model = cls(ModelConfig(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(16,),
                            density=DensityConfig(train_samples=train_samples), **config), seed=0)
    model.build()
    model.compile(optimizer=FusedAdam(BASE_LR))
    return model


def tiny_data():
    rng = np.random.default_rng(0)
    images = (rng.random((256, 8, 8, 1)) < 0.5).astype("float32")
    labels = np.zeros(256, "int64")
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32, drop_remainder=True).repeat()
    train = batches.skip  # start -> the stream from batch `start` on, as the Trainer takes it
    val = tf.data.Dataset.from_tensor_slices((images[:64], labels[:64])).batch(32)
    return train, val


def trainer_for(model, workdir, **kwargs):
    return Trainer(model, make_cluster("default", 0), global_batch=32, workdir=workdir,
                   tensorboard=False, **kwargs)


def test_lr_factor_starts_at_one_and_ends_at_zero():
    for schedule in ("linear", "cosine"):
        assert lr_factor(schedule, 0.0) == 1.0
        assert lr_factor(schedule, 1.0) == pytest.approx(0.0, abs=1e-12)
        assert lr_factor(schedule, 1.5) == pytest.approx(0.0, abs=1e-12)  # past the budget
    assert lr_factor("linear", 0.25) == 0.75
    assert lr_factor("cosine", 0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert all(lr_factor("constant", f) == 1.0 for f in (0.0, 0.5, 1.0))


def test_lr_schedule_must_be_known():
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ConfigError, match="iwae_start_fraction"):
        TrainConfig(iwae_start_fraction=1.0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_learning_rate_decays_to_about_zero_by_the_last_step(schedule, tmp_path):
    model = tiny_model()
    train, val = tiny_data()
    trainer = trainer_for(model, tmp_path, lr_schedule=schedule)
    trainer.fit(train, val, epochs=4, steps_per_epoch=100, verbose=0)  # 8 calls of 50 steps
    last = float(model.optimizer.learning_rate.numpy())
    # The last call of 50 steps starts at step 350 of 400.
    assert last == pytest.approx(BASE_LR * lr_factor(schedule, 350 / 400), rel=1e-5)
    assert last < 0.15 * BASE_LR


def test_a_resumed_run_continues_the_decay_where_the_killed_one_stopped(tmp_path):
    train, val = tiny_data()
    model = tiny_model()
    first = trainer_for(model, tmp_path, lr_schedule="linear")
    first.fit(train, val, epochs=2, steps_per_epoch=100, verbose=0)  # checkpointed at epoch 2
    resumed_model = tiny_model()
    resumed = trainer_for(resumed_model, tmp_path, lr_schedule="linear")
    assert resumed.base_learning_rate == pytest.approx(BASE_LR)  # the configured rate, not the decayed one
    resumed.fit(train, val, epochs=4, steps_per_epoch=100, verbose=0)
    assert int(resumed_model.optimizer.iterations.numpy()) == 400
    assert float(resumed_model.optimizer.learning_rate.numpy()) == pytest.approx(
        BASE_LR * lr_factor("linear", 350 / 400), rel=1e-5)


def test_under_a_time_budget_the_decay_follows_the_checkpointed_training_seconds(tmp_path):
    train, val = tiny_data()
    model = tiny_model()
    trainer = trainer_for(model, tmp_path, lr_schedule="cosine")
    trainer.seconds.assign(45.0)  # as if a killed run had trained for 45 s
    trainer.save(epoch=3, step=0)
    resumed_model = tiny_model()
    resumed = trainer_for(resumed_model, tmp_path, lr_schedule="cosine")
    assert resumed.restore() == (3, 0)
    fraction = resumed.run_fraction(max_seconds=60.0, total_steps=10**6)
    assert fraction == pytest.approx(0.75)
    resumed.apply_progress(fraction)
    assert float(resumed_model.optimizer.learning_rate.numpy()) == pytest.approx(
        BASE_LR * 0.5 * (1 + math.cos(0.75 * math.pi)), rel=1e-5)


def test_a_constant_schedule_leaves_the_learning_rate_alone(tmp_path):
    model = tiny_model()
    train, val = tiny_data()
    trainer_for(model, tmp_path).fit(train, val, epochs=1, steps_per_epoch=60, verbose=0)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(BASE_LR)


@keras.saving.register_keras_serializable(package="tests")
class VAEReportingSamples(VAE):
    """The VAE (its `train_samples` attribute read when a step is traced), reporting the
    k its traced step used."""

    LOSS_TERMS = (*VAE.LOSS_TERMS, "samples")

    def terms_of(self, batch, outputs):
        terms = super().terms_of(batch, outputs)
        return {**terms, "samples": tf.fill(tf.shape(terms["loss"]), float(self.train_samples))}


def test_the_iwae_switch_trains_with_one_sample_then_with_k(tmp_path):
    model = tiny_model(VAEReportingSamples, train_samples=5)
    train, val = tiny_data()
    trainer = trainer_for(model, tmp_path, iwae_start_fraction=0.5)
    history = trainer.fit(train, val, epochs=2, steps_per_epoch=100, verbose=0)
    assert [epoch["samples"] for epoch in history.epochs] == [1.0, 5.0]
    assert model.train_samples == 5


def test_without_a_start_fraction_the_model_trains_with_its_k_throughout(tmp_path):
    model = tiny_model(VAEReportingSamples, train_samples=5)
    train, val = tiny_data()
    history = trainer_for(model, tmp_path).fit(train, val, epochs=2, steps_per_epoch=50, verbose=0)
    assert [epoch["samples"] for epoch in history.epochs] == [5.0, 5.0]


def test_the_output_bias_is_the_logit_of_the_mean_training_image(tfds_dir):
    config = RunConfig()
    for assignment in (f'data.data_dir="{tfds_dir}"', 'data.train_split="train[:600]"',
                       "train.init_output_bias=true", "model.hidden_units=[32]", "model.latent_dim=2"):
        config = config.override(assignment)
    config, datasets = load_datasets(config)
    vae = build_model(config)
    init_output_bias(vae, config, datasets)
    images = np.stack([x["image"] for x in tfds.as_numpy(
        datasets.data.builder.as_dataset(split="train[:600]", shuffle_files=False))]).astype("float64") / 255.0
    p = np.clip(images.mean(axis=0), 1e-4, 1 - 1e-4)
    expected = np.log(p / (1 - p)).reshape(-1)
    np.testing.assert_allclose(vae.decoder.out.bias.numpy(), expected, rtol=1e-4, atol=1e-4)
    # The untrained decoder's mean image is then close to the data's mean image.
    assert abs(float(np.mean(vae.decode(np.zeros((1, 2), "float32")))) - images.mean()) < 0.1


def test_the_kl_warmup_by_run_fraction_ramps_the_models_kl_weight_to_beta(tmp_path):
    model = tiny_model(beta=0.8)
    train, val = tiny_data()
    trainer = trainer_for(model, tmp_path, kl_warmup_fraction=0.5)
    trainer.apply_progress(0.25)
    assert float(model.kl_weight(training=True)) == pytest.approx(0.4)  # halfway up the ramp
    assert float(model.kl_weight(training=False)) == 1.0  # evaluation is the true ELBO
    history = trainer.fit(train, val, epochs=2, steps_per_epoch=100, verbose=0)
    first = history.epochs[0]
    # During the ramp the objective weighs the KL by less than beta.
    assert first["loss"] < first["reconstruction"] + 0.8 * first["kl"] - 1e-3
    assert float(model.kl_weight(training=True)) == pytest.approx(0.8)


def test_several_workers_with_a_time_budget_are_refused_since_each_keeps_its_own_clock(tmp_path, monkeypatch):
    import json

    from pipelines.distribute import Cluster

    cluster_spec = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster_spec, "task": {"type": "worker", "index": 1}}))
    cluster = Cluster(tf.distribute.get_strategy(), "multiworker", "worker", 1)
    assert cluster.workers == 2
    train, val = tiny_data()
    trainer = Trainer(tiny_model(), cluster, global_batch=32, workdir=tmp_path, tensorboard=False,
                      lr_schedule="linear")
    with pytest.raises(ConfigError, match="train.max_train_seconds cannot be used with several workers"):
        trainer.fit(train, val, epochs=1, steps_per_epoch=2, max_seconds=60.0, verbose=0)
    assert int(trainer.optimizer.iterations.numpy()) == 0  # refused before any step
