"""A custom training loop for any model that owns its objective, under any tf.distribute
strategy.

Keras 3 `fit` fails under `MultiWorkerMirroredStrategy`, so one loop serves every
strategy. The model says what to minimise: `model.loss_terms(batch)` returns per-example
terms (its `LOSS_TERMS`), and the objective is `mean(terms["loss"]) + sum(model.losses)`.
The loop knows nothing of likelihoods, priors or model kinds: each replica averages
`loss` over the *global* batch (`tf.nn.compute_average_loss`) and divides the
`add_loss` terms by the number of replicas (`tf.nn.scale_regularization_loss`), so the
summed gradients equal one device's; it logs every term the model reports. Many steps
run inside one `tf.function` call.

Checkpoints (model, optimizer, progress, the training seconds used, the model's other
state such as its layers' noise generators, and early stopping's best loss and weights)
are written every epoch and, optionally, every N steps; a run started again resumes from
the last one, mid-epoch included. Bounded by epochs (or steps), the resumed run ends with
the weights of an uninterrupted run, bit for bit: the training batches are a stream keyed
by the seed that restarts at the checkpointed optimizer step (`pipelines.batches`), and
the sampling noise of a step is drawn statelessly from (seed, optimizer step, replica).
Under a time budget it ends when the checkpointed seconds plus the new ones use it up,
and since the schedules follow the seconds then, its weights are not an uninterrupted
run's.

Three things follow the run's progress (the fraction of the time budget used, or of the
steps without one), set between `tf.function` calls: the learning rate of a decaying
`lr_schedule` (`lr_factor`), the KL weight's warm-up over `kl_warmup_fraction` of the
run (handed to the model with `model.set_schedule`), and the number of importance
samples of a model with `train_samples` (one sample before `iwae_start_fraction`, the
model's k after; the step is retraced when it changes). Both are computed from checkpointed state, so a resumed
run continues where the killed one was.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.config import ConfigError
from model.draws import fold
from model.vae import split_batch
from pipelines.distribute import Cluster
from pipelines.workdir import CHECKPOINT_DIR, LOG_DIR, History

log = logging.getLogger(__name__)

# Steps per tf.function call: bounds how often the progress bar and checkpoints update.
STEPS_PER_CALL = 50
# Salts the run's seed for the training steps' sampling noise.
NOISE_SALT = 7


class EarlyStopping(tf.Module):
    """The best validation loss so far, the epochs waited since and the weights that
    reached it, in variables: checkpointed, so that a resumed run stops where the killed
    one would have and ends with the same best weights."""

    def __init__(self, weights, patience: int):
        super().__init__(name="early_stopping")
        self.patience = int(patience)
        self.best = tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best")
        self.waited = tf.Variable(0, dtype=tf.int64, trainable=False, name="waited")
        self.weights = [tf.Variable(keras.ops.convert_to_numpy(w), trainable=False) for w in weights]

    def update(self, val_loss: float, weights) -> None:
        """Records an epoch's `val_loss`, keeping the model's `weights` when it is the best."""
        if val_loss < float(self.best.numpy()):
            self.best.assign(val_loss)
            self.waited.assign(0)
            for kept, weight in zip(self.weights, weights):
                kept.assign(keras.ops.convert_to_numpy(weight))
        else:
            self.waited.assign_add(1)

    def best_weights(self) -> list[np.ndarray] | None:
        """The weights of the best epoch (None before any epoch was validated)."""
        return [v.numpy() for v in self.weights] if np.isfinite(self.best.numpy()) else None


def lr_factor(schedule: str, fraction: float) -> float:
    """The learning rate's multiplier at `fraction` in [0, 1] of the run: 1 throughout
    for `constant`; falling from 1 to 0 at the end for `linear` and `cosine`."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - fraction
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * fraction))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


class Trainer:
    """Trains a model (built and compiled with its optimizer under `cluster.strategy`).

    Args:
        model: any model that owns its objective: `loss_terms(batch, training, seed)`,
            `LOSS_TERMS`, `kl_per_unit`, `kl_weight` and `sample`; `model.optimizer` is the
            optimizer.
        cluster: the strategy and this process's role.
        global_batch: images per step across all replicas.
        workdir: checkpoints go to `workdir/checkpoints`, TensorBoard logs to
            `workdir/logs` (chief only).
        checkpoint_every_steps: also checkpoint every N optimizer steps (0: per epoch).
        jit: compile the replica step with XLA.
        lr_schedule: `constant`, `linear` or `cosine` (`lr_factor`): the optimizer's
            learning rate at construction decays to zero over the run.
        iwae_start_fraction: for a model with `train_samples` k > 1: train with one
            sample until this fraction of the run, with k after it.
        kl_warmup_fraction: ramp the model's KL weight from 0 to its beta over this
            fraction of the run (0: the model's own `kl_warmup_steps`, if any).
        seed: keys the sampling noise of every training step (with the step and the
            replica).
        patience: stop when `val_loss` has not improved for this many epochs and keep
            the best weights (0: never stop early).
        weight_decay: lambda of a Gaussian prior on the weights: lambda / 2 x the sum of
            every trainable weight squared joins each example's objective, so its
            gradient, lambda x w, goes through Adam with the data's (not decoupled, as in
            AdamW). 1 / N (N training examples) is a N(0, I) prior on the weights.
    """

    def __init__(self, model, cluster: Cluster, *, global_batch: int, workdir: Path,
                 checkpoint_every_steps: int = 0, jit: bool = False, tensorboard: bool = True,
                 lr_schedule: str = "constant", iwae_start_fraction: float = 0.0,
                 kl_warmup_fraction: float = 0.0, seed: int = 0, patience: int = 0,
                 weight_decay: float = 0.0):
        self.model = model
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.optimizer = model.optimizer
        self.cluster = cluster
        self.strategy = cluster.strategy
        self.global_batch = global_batch
        self.checkpoint_every_steps = checkpoint_every_steps
        with self.strategy.scope():
            self.optimizer.build(model.trainable_variables)
            # (epoch, step within the epoch) of the next step to run.
            self.progress = tf.Variable([0, 0], dtype=tf.int64, trainable=False, name="progress")
            # Seconds of training steps used so far (the time budget and the schedule).
            self.seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
            self.early_stopping = EarlyStopping(model.weights, patience) if patience else None
        core = dict(model=model, optimizer=self.optimizer, progress=self.progress, train_seconds=self.seconds)
        # What checkpoints held before the model's other state and early stopping's joined them.
        self._core_checkpoint = tf.train.Checkpoint(**core)
        # The model's non-trainable variables: among them, the state of every layer's own
        # noise generator (a Keras `SeedGenerator`, which the model's checkpoint omits).
        state = dict(model_state=list(model.non_trainable_variables))
        if self.early_stopping is not None:
            state["early_stopping"] = self.early_stopping
        self.checkpoint = tf.train.Checkpoint(**core, **state)
        self.lr_schedule = lr_schedule
        self.base_learning_rate = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        self.iwae_start_fraction = float(iwae_start_fraction)
        # The model's configured importance samples.
        self.train_samples = int(model.model_config.density.train_samples)
        self.kl_warmup_fraction = float(kl_warmup_fraction)
        if self.kl_warmup_fraction:
            # Not checkpointed: recomputed from the run's fraction before every call.
            with self.strategy.scope():
                self.kl_ramp = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="kl_ramp")
            model.set_schedule(kl_warmup_ramp=self.kl_ramp.read_value)
        self._checkpoint_dir = workdir / CHECKPOINT_DIR
        self._write_dir = self._checkpoint_dir if cluster.is_chief else Path(
            tempfile.mkdtemp(prefix=f"vae-worker{cluster.task_id}-"))
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self._write_dir), max_to_keep=2)
        if tensorboard and cluster.is_chief:
            self.writer = tf.summary.create_file_writer(str(workdir / LOG_DIR))
        else:
            self.writer = tf.summary.create_noop_writer()
        self.jit = jit
        self.terms = tuple(model.LOSS_TERMS)
        if self.terms[0] != "loss":
            raise ValueError(f"{type(model).__name__}.LOSS_TERMS must start with 'loss', got {self.terms}")
        self._trace_train_step()
        self._val_batch = tf.function(self._validation_batch, reduce_retracing=True)

    def _trace_train_step(self) -> None:
        """(Re)creates the compiled training step: the model's Python attributes (such as
        `train_samples`) are read when it is traced."""
        self._replica_fn = tf.function(self._replica_step, jit_compile=True) if self.jit else self._replica_step
        self._train_steps = tf.function(self._steps)

    # === Progress-driven settings ===
    def run_fraction(self, max_seconds: float, total_steps: int) -> float:
        """The fraction of the run done: of the time budget if any, else of the steps."""
        if max_seconds:
            return float(self.seconds.numpy()) / max_seconds
        return int(self.optimizer.iterations.numpy()) / max(total_steps, 1)

    def apply_progress(self, fraction: float) -> None:
        """Sets the learning rate and the importance samples for this point of the run."""
        if self.lr_schedule != "constant":
            self.optimizer.learning_rate.assign(self.base_learning_rate * lr_factor(self.lr_schedule, fraction))
        if self.kl_warmup_fraction:
            self.kl_ramp.assign(min(1.0, fraction / self.kl_warmup_fraction))
        if self.train_samples > 1:
            wanted = self.train_samples if fraction >= self.iwae_start_fraction else 1
            if self.model.train_samples != wanted:
                log.info("training with %d importance sample(s) from %.0f%% of the run", wanted, 100 * fraction)
                self.model.set_schedule(train_samples=wanted)
                self._trace_train_step()

    # === Steps ===
    def _objective_parts(self, batch, training: bool, seed=None):
        """(the model's per-example terms, the sum of its `add_loss` terms), read right after
        the forward pass: under a strategy the replicas share the model object."""
        terms = self.model.loss_terms(batch, training=training, seed=seed)
        added = [tf.cast(v, tf.float32) for v in self.model.losses]
        return terms, (tf.add_n(added) if added else tf.zeros(()))

    def _term_sums(self, terms: dict, regularization, count) -> tf.Tensor:
        """[sum of each LOSS_TERMS over the batch..., add_loss sum x count, count]."""
        sums = [tf.reduce_sum(terms[k]) for k in self.terms]
        return tf.stack([*sums, regularization * count, count])

    def _noise_seed(self):
        """The sampling noise's stateless seed for this step on this replica: a function of
        the run's seed and the (checkpointed) optimizer step, so that a resumed run draws
        what the killed one would have, and each replica draws its own."""
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        step = tf.cast(keras.ops.convert_to_tensor(self.optimizer.iterations), tf.int64)
        return fold(fold([self.seed, NOISE_SALT], step), replica)

    def _weight_penalty(self):
        """The weight prior's term of each example's objective (`weight_decay`)."""
        squares = [tf.reduce_sum(tf.square(tf.cast(w, tf.float32))) for w in self.model.trainable_variables]
        return 0.5 * self.weight_decay * tf.add_n(squares)

    def _replica_step(self, batch):
        model = self.model
        with tf.GradientTape() as tape:
            terms, regularization = self._objective_parts(batch, training=True, seed=self._noise_seed())
            loss = tf.nn.compute_average_loss(terms["loss"], global_batch_size=self.global_batch)
            loss += tf.nn.scale_regularization_loss(regularization)
            if self.weight_decay:
                loss += tf.nn.scale_regularization_loss(self._weight_penalty())
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return self._term_sums(terms, regularization, tf.cast(tf.shape(terms["loss"])[0], tf.float32))

    def _steps(self, iterator, steps):
        totals = tf.zeros(len(self.terms) + 2)
        for _ in tf.range(steps):
            per_replica = self.strategy.run(self._replica_fn, args=(next(iterator),))
            totals += self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return totals

    def _logs(self, totals, prefix: str = "") -> dict[str, float]:
        """Per-example means of the summed terms; `loss` is the whole objective."""
        count = max(float(totals[-1]), 1.0)
        logs = {f"{prefix}{k}": float(totals[i]) / count for i, k in enumerate(self.terms) if k != "loss"}
        objective = (float(totals[0]) + float(totals[-2])) / count
        return {f"{prefix}loss": objective, **logs}

    def _validation_batch(self, batch, seed):
        images, labels = split_batch(batch)  # a conditional model's KL needs the labels too
        terms, regularization = self._objective_parts(batch, training=False, seed=seed)
        kl_units = tf.reduce_sum(self.model.kl_per_unit(images, labels=labels), axis=0)
        return self._term_sums(terms, regularization, tf.cast(tf.shape(images)[0], tf.float32)), kl_units

    def validate(self, dataset, seed: int = 0) -> dict:
        """The model's terms (`val_loss`: the objective with KL weight 1, the negative
        ELBO) and the KL per latent unit, on a fixed validation set."""
        totals, kl_units = np.zeros(len(self.terms) + 2), 0.0
        for index, batch in enumerate(dataset):
            sums, kl = self._val_batch(batch, tf.constant([seed, index], tf.int64))
            totals += sums.numpy()
            kl_units = kl_units + kl.numpy()
        return {**self._logs(totals, "val_"), "kl_per_unit": np.asarray(kl_units) / max(totals[-1], 1.0)}

    # === Checkpoints ===
    def restore(self) -> tuple[int, int]:
        """Restores the latest checkpoint, if any; returns (epoch, step) to resume at."""
        latest = tf.train.latest_checkpoint(str(self._checkpoint_dir))
        if latest:
            try:
                self.checkpoint.restore(latest).assert_existing_objects_matched()
            except AssertionError:
                # Written before the model's other state joined the checkpoints: the rest
                # must match; the noise generators and early stopping start afresh.
                self._core_checkpoint.restore(latest).assert_existing_objects_matched()
                log.warning("%s holds no noise-generator or early-stopping state (an older checkpoint): "
                            "resuming without them", latest)
            epoch, step = (int(v) for v in self.progress.numpy())
            log.info("resuming from %s at epoch %d, step %d (optimizer step %d)",
                     latest, epoch + 1, step, int(self.optimizer.iterations.numpy()))
            return epoch, step
        return 0, 0

    def save(self, epoch: int, step: int, seconds: float | None = None) -> None:
        """Checkpoints the model, the optimizer, (epoch, step) and the seconds used."""
        self.progress.assign([epoch, step])
        if seconds is not None:
            self.seconds.assign(seconds)
        self.manager.save(checkpoint_number=int(self.optimizer.iterations.numpy()))
        if not self.cluster.is_chief:
            # Every worker takes part in saving; only the chief's copy is kept.
            shutil.rmtree(self._write_dir, ignore_errors=True)

    def clear_checkpoints(self) -> None:
        """Removes the checkpoints once the run's outputs are safely written."""
        if self.cluster.is_chief:
            shutil.rmtree(self._checkpoint_dir, ignore_errors=True)

    # === The loop ===
    def fit(self, train_batches: Callable[[int], tf.data.Dataset], val_dataset, *, epochs: int,
            steps_per_epoch: int, max_seconds: float = 0, verbose: int = 1) -> History:
        """Runs the remaining epochs.

        Args:
            train_batches: start -> the repeated stream of global batches from global
                batch `start` on (called once, with the restored optimizer step).
            max_seconds: stop training (at the next call boundary, mid-epoch if need be)
                once this many seconds of training steps have run (0: no limit).
            verbose: 1 progress bar, 2 one line per epoch, 0 silent.
        """
        if max_seconds and self.cluster.workers > 1:
            raise ConfigError(
                "train.max_train_seconds cannot be used with several workers: each keeps its own clock, so "
                "they would stop, decay the learning rate and warm up the KL at different steps; "
                "bound the run with train.epochs (and train.steps_per_epoch) instead")
        start_epoch, start_step = self.restore()
        budget_used = float(self.seconds.numpy())  # seconds a killed run had used
        total_steps = epochs * steps_per_epoch
        start = int(self.optimizer.iterations.numpy())  # the global batches the checkpoint has seen
        iterator = iter(self.strategy.experimental_distribute_dataset(train_batches(start)))
        history = History(completed_epochs=start_epoch)
        for epoch in range(start_epoch, epochs):
            if epoch == start_epoch and self.stopped_early(epoch):  # the killed run had stopped
                break
            step = start_step if epoch == start_epoch else 0
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs}", flush=True)
            bar = keras.utils.Progbar(steps_per_epoch, verbose=verbose if verbose == 1 else 0)
            totals = np.zeros(len(self.terms) + 2)
            began, epoch_start = time.perf_counter(), step
            out_of_time = False
            while step < steps_per_epoch:
                if max_seconds and budget_used + time.perf_counter() - began >= max_seconds:
                    out_of_time = True
                    break
                self.seconds.assign(budget_used + time.perf_counter() - began)
                self.apply_progress(self.run_fraction(max_seconds, total_steps))
                count = min(STEPS_PER_CALL, steps_per_epoch - step)
                if self.checkpoint_every_steps:
                    done = int(self.optimizer.iterations.numpy())
                    count = min(count, self.checkpoint_every_steps - done % self.checkpoint_every_steps)
                totals += self._train_steps(iterator, tf.constant(count)).numpy()
                step += count
                bar.update(step, [("loss", self._logs(totals)["loss"])])
                if (self.checkpoint_every_steps and step < steps_per_epoch
                        and int(self.optimizer.iterations.numpy()) % self.checkpoint_every_steps == 0):
                    self.save(epoch, step, budget_used + time.perf_counter() - began)
            seconds = time.perf_counter() - began
            budget_used += seconds
            self.seconds.assign(budget_used)
            history.train_seconds = budget_used
            if out_of_time and step == epoch_start:  # not one step of this epoch ran: nothing to log
                log.info("time budget of %.0f s used up before epoch %d", max_seconds, epoch + 1)
                break
            if epoch_start == 0 and not out_of_time:
                history.epoch_seconds.append(seconds)
            val = self.validate(val_dataset)
            logs = {**self._logs(totals), **{k: v for k, v in val.items() if k != "kl_per_unit"}}
            history.epochs.append(logs)
            history.completed_epochs = epoch + 1
            self._summaries(epoch, logs, val["kl_per_unit"])
            if out_of_time:
                log.info("time budget of %.0f s used up in epoch %d (step %d of %d)",
                         max_seconds, epoch + 1, step, steps_per_epoch)
                break
            if self.early_stopping is not None:
                self.early_stopping.update(logs["val_loss"], self.model.weights)  # before the checkpoint
            self.save(epoch + 1, 0)
            if verbose:
                print(f"{steps_per_epoch}/{steps_per_epoch} - {seconds:.0f}s - " + " - ".join(
                    f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
            if self.stopped_early(epoch + 1):
                break
            if max_seconds and budget_used >= max_seconds:  # rather than an epoch with no step
                log.info("time budget of %.0f s used up at the end of epoch %d", max_seconds, epoch + 1)
                break
        best = self.early_stopping.best_weights() if self.early_stopping is not None else None
        if best is not None:
            self.model.set_weights(best)
        return history

    def stopped_early(self, epochs_done: int) -> bool:
        """Whether early stopping ends the run after `epochs_done` epochs."""
        stopping = self.early_stopping
        if stopping is None or int(stopping.waited.numpy()) < stopping.patience:
            return False
        log.info("early stopping after epoch %d: val_loss has not improved for %d epochs (best %.3f)",
                 epochs_done, stopping.patience, float(stopping.best.numpy()))
        return True

    def _summaries(self, epoch: int, logs: dict, kl_per_unit) -> None:
        with self.writer.as_default(step=epoch + 1):
            for key, value in logs.items():
                tf.summary.scalar(key, value)
            tf.summary.scalar("learning_rate", float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)))
            tf.summary.scalar("kl_weight", float(self.model.kl_weight(training=True)))
            for unit, value in enumerate(kl_per_unit):
                tf.summary.scalar(f"kl_per_unit/{unit:03d}", float(value))
            tf.summary.image("samples", self.model.sample(16, seed=0), max_outputs=16)
        self.writer.flush()
