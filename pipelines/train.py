"""`vae train`: data -> fit -> save -> evaluate -> pictures, all inside one workdir.

Workdir layout:
    config.json      the resolved RunConfig (written before training starts)
    backup/          Keras BackupAndRestore state while a run is unfinished
    model.keras      the trained model (written atomically)
    metrics.json     test metrics and training speed (written last: marks a finished run)
    history.json     per-epoch losses
    *.png            samples, reconstructions, and for a 2-D latent the latent space
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import keras
import numpy as np

from model import VAE
from pipelines import data, plots
from pipelines.config import RunConfig
from pipelines.evaluate import evaluate

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
BACKUP_DIR = "backup"


class WorkdirError(RuntimeError):
    """The workdir holds a finished run and `overwrite` was not given."""


def write_json_atomic(path: Path, payload) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_model_atomic(vae, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    vae.save(tmp)
    os.replace(tmp, path)


class Throughput(keras.callbacks.Callback):
    """Times each epoch's training part (validation excluded)."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.seconds: list[float] = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def _stop(self):
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_test_begin(self, logs=None):
        self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self._stop()

    def images_per_second(self) -> float:
        """Median over the epochs after the first (which includes tracing), if any."""
        steady = self.seconds[1:] or self.seconds
        return self.images_per_epoch / statistics.median(steady) if steady else 0.0


def build_model(config: RunConfig) -> VAE:
    """The VAE of a run, built (all weights created)."""
    vae = VAE(config.model, seed=config.train.seed)
    vae.build()
    return vae


def _check_workdir(workdir: Path, overwrite: bool) -> None:
    if (workdir / METRICS_FILE).exists() and not overwrite:
        raise WorkdirError(
            f"{workdir} holds a finished run ({METRICS_FILE} exists); pass --overwrite to "
            f"train again there, or choose another --workdir"
        )
    if overwrite:
        for name in (METRICS_FILE, MODEL_FILE, HISTORY_FILE):
            (workdir / name).unlink(missing_ok=True)


def train(config: RunConfig, workdir: str | Path, *, overwrite: bool = False,
          verbose: int | None = None) -> dict:
    """Trains, saves, evaluates and draws one VAE; returns the metrics.

    A killed run resumes from `workdir/backup` when the same command runs again.

    Raises:
        WorkdirError: the workdir holds a finished run and `overwrite` is False.
        pipelines.data.DataError: the dataset cannot be found or prepared.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_workdir(workdir, overwrite)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    keras.utils.set_random_seed(config.train.seed)

    builder = data.get_builder(config.data)
    shape = data.image_shape(builder, config.data)
    if shape != config.model.image_shape:
        log.info("image shape from %s: %s", config.data.dataset, shape)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, image_shape=shape))
    config.save(workdir / CONFIG_FILE)

    train_cfg = config.train
    train_ds = data.training_dataset(
        builder, config.data, config.data.train_split, train_cfg.batch_size,
        binarize=config.binarize, seed=train_cfg.seed, repeat=train_cfg.steps_per_epoch is not None,
    )
    val_ds = data.evaluation_dataset(
        builder, config.data, config.data.validation_split, train_cfg.eval_batch_size,
        binarize=config.binarize, seed=train_cfg.seed + 1, limit=train_cfg.eval_examples,
    )
    if train_cfg.steps_per_epoch is not None:
        images_per_epoch = train_cfg.steps_per_epoch * train_cfg.batch_size
    else:
        images_per_epoch = data.num_examples(builder, config.data.train_split)

    vae = build_model(config)
    vae.compile(optimizer=keras.optimizers.Adam(train_cfg.learning_rate))
    throughput = Throughput(images_per_epoch)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(workdir / BACKUP_DIR), save_freq="epoch"),
        throughput,
    ]
    log.info("training %s on %s for %d epochs", config.model.architecture, config.data.dataset,
             train_cfg.epochs)
    history = vae.fit(
        train_ds, validation_data=val_ds, epochs=train_cfg.epochs,
        steps_per_epoch=train_cfg.steps_per_epoch, callbacks=callbacks, verbose=verbose,
        shuffle=False,  # the pipeline shuffles
    )
    save_model_atomic(vae, workdir / MODEL_FILE)
    write_json_atomic(workdir / HISTORY_FILE, {k: [float(v) for v in vals] for k, vals in history.history.items()})

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
    metrics.update(
        epochs=train_cfg.epochs,
        train_images_per_second=throughput.images_per_second(),
        epoch_seconds=throughput.seconds,
        dataset=config.data.dataset,
        pictures=sorted(p.name for p in pictures),
        wall_seconds=time.perf_counter() - started,
    )
    write_json_atomic(workdir / METRICS_FILE, metrics)
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
