"""`vae train`: data -> distributed training -> save -> evaluate -> pictures, in one workdir.

Workdir layout:
    config.json      the resolved RunConfig (written before training starts)
    checkpoints/     model, optimizer and progress while a run is unfinished
    logs/            TensorBoard: losses, KL per latent unit, learning rate, samples
    model.keras      the trained model (written atomically)
    exports/NAME/N/  the SavedModel served by TF Serving (one version per finished run)
    history.json     per-epoch losses
    metrics.json     test metrics and training speed (written last: marks a finished run)
    *.png            samples, reconstructions, and for a 2-D latent the latent space

Under `multiworker` every host runs the same command; only the chief writes here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from model import VAE
from pipelines import data, plots
from pipelines.config import RunConfig
from pipelines.distribute import Cluster, make_cluster
from pipelines.evaluate import evaluate
from pipelines.optimizers import FusedAdam
from pipelines.trainer import History, Trainer
from serving.export import export_model

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "exports"
LOG_DIR = "logs"


class WorkdirError(RuntimeError):
    """The workdir holds a finished run, or an unfinished run of another config."""


def write_json_atomic(path: Path, payload) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_model_atomic(vae, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    vae.save(tmp)
    os.replace(tmp, path)


def build_model(config: RunConfig) -> VAE:
    """The VAE of a run, built (all weights created) and compiled with its optimizer."""
    vae = VAE(config.model, seed=config.train.seed)
    vae.build()
    vae.compile(optimizer=FusedAdam(config.train.learning_rate))
    return vae


# Fields that may change between a killed run and its resumption.
_RESUMABLE_CHANGES = {"train.epochs", "train.max_train_seconds", "train.strategy", "train.cpu_replicas", "train.verbose",
                      "train.early_stopping_patience", "train.tensorboard", "data.data_dir",
                      "data.download"}


def _flatten(config: RunConfig) -> dict:
    return {f"{section}.{k}": v for section, fields in config.to_dict().items()
            for k, v in fields.items()}


def _check_workdir(workdir: Path, config: RunConfig, overwrite: bool) -> None:
    if overwrite:
        for name in (METRICS_FILE, MODEL_FILE, HISTORY_FILE, CONFIG_FILE):
            (workdir / name).unlink(missing_ok=True)
        for name in (CHECKPOINT_DIR, LOG_DIR):
            shutil.rmtree(workdir / name, ignore_errors=True)
        return
    if (workdir / METRICS_FILE).exists():
        raise WorkdirError(
            f"{workdir} holds a finished run ({METRICS_FILE} exists); pass --overwrite to "
            f"train again there, or choose another --workdir"
        )
    previous = workdir / CONFIG_FILE
    if (workdir / CHECKPOINT_DIR).exists() and previous.exists():
        old, new = _flatten(RunConfig.load(previous)), _flatten(config)
        changed = sorted(k for k in new if old.get(k) != new[k] and k not in _RESUMABLE_CHANGES)
        if changed:
            raise WorkdirError(
                f"{workdir} holds an unfinished run with another config ("
                + ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
                + "); run the same command to resume it, or pass --overwrite to start anew"
            )


def set_precision(config: RunConfig) -> None:
    if config.train.mixed_precision:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)
        log.info("mixed precision: %s (losses and the KL stay float32)", policy)


@dataclasses.dataclass
class Datasets:
    """The input pipelines of a run."""

    builder: object
    train: tf.data.Dataset  # repeated, shuffled global batches
    validation: tf.data.Dataset  # fixed batches
    steps_per_epoch: int


def load_datasets(config: RunConfig, workers: int = 1) -> tuple[RunConfig, Datasets]:
    """Prepares the data; returns the config with the dataset's image shape, and the
    training and validation pipelines (the training split held in memory when it fits
    `data.in_memory_max_mb` and one worker trains; tf.data streams and shards it
    otherwise)."""
    builder = data.get_builder(config.data)
    shape = data.image_shape(builder, config.data)
    if shape != config.model.image_shape:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, image_shape=shape))
    train_cfg = config.train
    global_batch = train_cfg.batch_size
    steps_per_epoch = train_cfg.steps_per_epoch or (
        data.num_examples(builder, config.data.train_split) // global_batch)
    if steps_per_epoch < 1:
        raise data.DataError(
            f"split {config.data.train_split!r} has fewer examples than one batch of {global_batch}")
    split = config.data.train_split
    if workers == 1 and data.in_memory_size_mb(builder, config.data, split) <= config.data.in_memory_max_mb:
        train_ds = data.in_memory_training_dataset(
            builder, config.data, split, global_batch, binarize=config.binarize, seed=train_cfg.seed)
    else:
        train_ds = data.training_dataset(
            builder, config.data, split, global_batch,
            binarize=config.binarize, seed=train_cfg.seed, repeat=True,
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    val_ds = data.evaluation_dataset(
        builder, config.data, config.data.validation_split, train_cfg.eval_batch_size,
        binarize=config.binarize, seed=train_cfg.seed + 1, limit=train_cfg.eval_examples,
    )
    return config, Datasets(builder, train_ds.with_options(options), val_ds, steps_per_epoch)


def fit(config: RunConfig, datasets: Datasets, cluster: Cluster, workdir: Path, *,
        verbose: int = 2) -> tuple[VAE, History, Trainer]:
    """Builds the VAE under the strategy and trains it (resuming from workdir's
    checkpoints if any). The training code of `vae train` and `vae tune`."""
    with cluster.strategy.scope():
        vae = build_model(config)
    train_cfg = config.train
    trainer = Trainer(vae, cluster, global_batch=train_cfg.batch_size, workdir=workdir,
                      checkpoint_every_steps=train_cfg.checkpoint_every_steps,
                      jit=train_cfg.jit, tensorboard=train_cfg.tensorboard)
    log.info("training %s on %s: %d epochs of %d steps, global batch %d, %d replica(s)",
             config.model.architecture, config.data.dataset, train_cfg.epochs,
             datasets.steps_per_epoch, train_cfg.batch_size, cluster.replicas)
    history = trainer.fit(datasets.train, datasets.validation, epochs=train_cfg.epochs,
                          steps_per_epoch=datasets.steps_per_epoch,
                          patience=train_cfg.early_stopping_patience,
                          max_seconds=train_cfg.max_train_seconds, verbose=verbose)
    return vae, history, trainer


def train(config: RunConfig, workdir: str | Path, *, overwrite: bool = False,
          verbose: int | None = None, cluster: Cluster | None = None) -> dict:
    """Trains, saves, evaluates and draws one VAE; returns the metrics (empty on a
    worker that is not the chief).

    A killed run resumes from `workdir/checkpoints` when the same command runs again.

    Raises:
        WorkdirError: the workdir holds a finished run and `overwrite` is False, or an
            unfinished run of a different config.
        pipelines.data.DataError: the dataset cannot be found or prepared.
        pipelines.distribute.DistributionError: the strategy cannot run here.
    """
    started = time.perf_counter()
    cluster = cluster or make_cluster(config.train.strategy, config.train.cpu_replicas)
    workdir = Path(workdir)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    keras.utils.set_random_seed(config.train.seed)
    set_precision(config)
    config, datasets = load_datasets(config, workers=cluster.workers)
    if cluster.is_chief:
        workdir.mkdir(parents=True, exist_ok=True)
        _check_workdir(workdir, config, overwrite)
        config.save(workdir / CONFIG_FILE)
    vae, history, trainer = fit(config, datasets, cluster, workdir, verbose=verbose)
    if not cluster.is_chief:
        return {}
    metrics = finish(config, vae, history, datasets, workdir, verbose=verbose)
    metrics.update(replicas=cluster.replicas, strategy=cluster.name)
    version_dir = export_model(vae, workdir / EXPORT_DIR, config.train.model_name,
                               run_config=config.to_dict(), metrics=metrics)
    metrics.update(export=str(version_dir), wall_seconds=time.perf_counter() - started)
    write_json_atomic(workdir / METRICS_FILE, metrics)
    trainer.clear_checkpoints()
    return metrics


def finish(config: RunConfig, vae: VAE, history: History, datasets: Datasets, workdir: Path,
           *, verbose: int = 2) -> dict:
    """Saves the model and history, evaluates on the test split and draws the pictures;
    returns the metrics (the caller writes them last)."""
    save_model_atomic(vae, workdir / MODEL_FILE)
    write_json_atomic(workdir / HISTORY_FILE, history.as_dict())
    train_cfg = config.train
    builder = datasets.builder
    test_ds = data.evaluation_dataset(
        builder, config.data, config.data.test_split, train_cfg.eval_batch_size,
        binarize=config.binarize, seed=train_cfg.seed + 2, limit=train_cfg.eval_examples,
    )
    test_count = min(data.num_examples(builder, config.data.test_split),
                     train_cfg.eval_examples or sys.maxsize)
    log.info("evaluating on %d test images (IWAE k=%d)", test_count, train_cfg.iwae_k)
    metrics = evaluate(vae, test_ds, iwae_k=train_cfg.iwae_k, batch_size=train_cfg.eval_batch_size,
                       seed=train_cfg.seed, num_examples=test_count, verbose=verbose == 1)
    pictures = draw_pictures(vae, test_ds, workdir, seed=train_cfg.seed)
    steady = history.train_seconds[1:] or history.train_seconds
    images_per_epoch = datasets.steps_per_epoch * train_cfg.batch_size
    metrics.update(
        epochs=history.completed_epochs,
        optimizer_steps=int(vae.optimizer.iterations.numpy()),
        train_images_per_second=images_per_epoch / statistics.median(steady) if steady else None,
        epoch_seconds=history.train_seconds,
        train_seconds=history.total_train_seconds,
        dataset=config.data.dataset,
        pictures=sorted(p.name for p in pictures),
    )
    return metrics


def draw_pictures(vae, test_ds, workdir: Path, seed: int = 0) -> list[Path]:
    """Writes samples.png, reconstructions.png and, for a 2-D latent space,
    latent_scatter.png and manifold.png."""
    first_images = next(iter(test_ds))[0].numpy()
    paths = [
        plots.sample_grid(vae, workdir / "samples.png", seed=seed),
        plots.reconstruction_grid(vae, first_images, workdir / "reconstructions.png"),
    ]
    if vae.latent_dim == 2:
        codes, labels = [], []
        for images, batch_labels in test_ds:
            codes.append(np.asarray(vae.encode(images)[0]))
            labels.append(batch_labels.numpy())
        paths.append(plots.latent_scatter(np.concatenate(codes), np.concatenate(labels),
                                          workdir / "latent_scatter.png"))
        paths.append(plots.manifold_grid(vae, workdir / "manifold.png"))
    return paths
