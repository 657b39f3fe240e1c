"""The training loop trains any model that owns its objective, and logs what it reports."""

import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from model import VAE, ModelConfig
from pipelines.distribute import make_cluster
from pipelines.train.trainer import Trainer


@keras.saving.register_keras_serializable(package="tests")
class VAEWithZNorm(VAE):
    """A model kind the trainer has never heard of: it reports one more term."""

    LOSS_TERMS = (*VAE.LOSS_TERMS, "z_norm")

    def terms_of(self, batch, outputs):
        return {**super().terms_of(batch, outputs), "z_norm": tf.norm(outputs["z"], axis=-1)}


def test_the_trainer_logs_every_term_the_model_reports():
    keras.utils.set_random_seed(0)
    cluster = make_cluster("default", 0)
    model = VAEWithZNorm(ModelConfig(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(32,)), seed=0)
    model.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(0)
    images = (rng.random((256, 8, 8, 1)) < 0.5).astype("float32")
    labels = np.zeros(256, "int64")
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(64, drop_remainder=True).repeat()
    val = tf.data.Dataset.from_tensor_slices((images[:128], labels[:128])).batch(64)
    trainer = Trainer(model, cluster, global_batch=64, workdir=Path(tempfile.mkdtemp()), tensorboard=False)
    history = trainer.fit(train.skip, val, epochs=2, steps_per_epoch=4, verbose=0)
    assert set(history.epochs[0]) == {"loss", "reconstruction", "kl", "z_norm",
                                      "val_loss", "val_reconstruction", "val_kl", "val_z_norm"}
    last = history.epochs[-1]
    # `loss` is the whole objective (beta = 1 here): reconstruction + KL, per example.
    assert abs(last["loss"] - (last["reconstruction"] + last["kl"])) < 1e-3
    assert abs(last["val_loss"] - (last["val_reconstruction"] + last["val_kl"])) < 1e-3
    assert last["z_norm"] > 0 and int(model.optimizer.iterations.numpy()) == 8


def _one_sgd_step(weight_decay: float, learning_rate: float):
    """(weights before, weights after) of one plain-SGD step on a fixed batch."""
    keras.utils.set_random_seed(0)
    model = VAE(ModelConfig(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(16,)), seed=0)
    model.build()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate))
    images = (np.random.default_rng(0).random((32, 8, 8, 1)) < 0.5).astype("float32")
    train = tf.data.Dataset.from_tensors((images, np.zeros(32, "int64"))).repeat()
    before = [w.numpy().copy() for w in model.trainable_variables]
    trainer = Trainer(model, make_cluster("default", 0), global_batch=32, workdir=Path(tempfile.mkdtemp()),
                      tensorboard=False, weight_decay=weight_decay)
    trainer.fit(train.skip, train.take(1), epochs=1, steps_per_epoch=1, verbose=0)
    return before, [w.numpy() for w in model.trainable_variables]


def test_weight_decay_adds_lambda_times_each_weight_to_its_gradient():
    learning_rate, weight_decay = 0.5, 0.1
    before, plain = _one_sgd_step(0.0, learning_rate)
    _, decayed = _one_sgd_step(weight_decay, learning_rate)
    # SGD: w - lr (g + lambda w) against w - lr g, from the same weights, batch and noise.
    for w0, a, b in zip(before, plain, decayed):
        np.testing.assert_allclose(a - b, learning_rate * weight_decay * w0, atol=1e-5)
    assert any(np.abs(w0).max() > 0.1 for w0 in before)  # the difference is not trivially zero
