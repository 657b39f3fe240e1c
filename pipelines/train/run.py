"""`vae train`: data -> distributed training -> save -> evaluate -> pictures -> export (every
kind: the exporter gives a cvae or m2 its own signatures, and the dataset's class names),
in one run folder (its layout: `pipelines.workdir`).

Under `multiworker` every host runs the same command; only the chief writes the folder.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from model import classes, kinds
from model.vae import VAE
from pipelines import data, plots, workdir as W
from pipelines.config import RunConfig
from pipelines.distribute import Cluster, make_cluster
from pipelines.evaluate import evaluate, resolve_iwae_k
from pipelines.optimizers import FusedAdam
from pipelines.train import stages
from pipelines.train.inputs import Datasets, load_datasets, test_dataset, training_images
from pipelines.train.trainer import Trainer
from pipelines.workdir import History

log = logging.getLogger(__name__)


def load_saved_model(path: str | Path, compile: bool = False) -> VAE:
    """A model of any kind saved as a `.keras` file (every kind's class is registered with
    Keras first, `model.kinds.import_classes`)."""
    kinds.import_classes()
    return keras.models.load_model(path, compile=compile)


def build_model(config: RunConfig) -> VAE:
    """The model of a run (the class `model.kinds` declares for its config), built (all
    weights created) and compiled with its optimizer."""
    vae = classes.build_model(config.model, seed=config.train.seed)
    vae.build()
    vae.compile(optimizer=FusedAdam(config.train.learning_rate))
    return vae


def set_precision(config: RunConfig) -> None:
    """Sets Keras' global dtype policy for the run (float32 unless `train.mixed_precision`),
    so that a process that trains twice gets each run's own precision."""
    policy = "float32"
    if config.train.mixed_precision:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
        log.info("mixed precision: %s (losses and the KL stay float32)", policy)
    keras.mixed_precision.set_global_policy(policy)


def mean_training_image(config: RunConfig, datasets: Datasets) -> np.ndarray:
    """The mean image of the training split, intensities in [0, 1]: (H, W, C) float32."""
    images = training_images(config, datasets, 10_000)
    total, count = 0.0, 0
    for batch, _ in images:
        total = total + tf.reduce_sum(tf.cast(batch, tf.float64), axis=0)
        count += int(batch.shape[0])
    return (np.asarray(total) / max(count, 1)).astype("float32")


def output_bias(config: RunConfig, mean_image: np.ndarray, x_shape) -> np.ndarray:
    """The decoder's initial output bias for a mean training image: its logit per pixel
    for a Bernoulli decoder (clipped to [1e-4, 1 - 1e-4]: border pixels are always 0),
    the mean itself for a Gaussian. A model of half images gets the mean over pixels."""
    mean = mean_image if tuple(mean_image.shape) == tuple(x_shape) else np.float32(mean_image.mean())
    if config.model.likelihood == "bernoulli":
        p = np.clip(mean, 1e-4, 1 - 1e-4)
        return np.log(p) - np.log1p(-p)
    return mean


def init_output_bias(vae: VAE, config: RunConfig, datasets: Datasets) -> None:
    """Sets the decoder's output bias from the training split (`train.init_output_bias`)."""
    bias = output_bias(config, mean_training_image(config, datasets), vae.x_shape)
    vae.set_output_bias(bias)
    log.info("decoder output bias set from the mean training image (mean bias %.3f)", float(np.mean(bias)))


def fit(config: RunConfig, datasets: Datasets, cluster: Cluster, workdir: Path, *,
        verbose: int = 2, first_stage: Path | None = None) -> tuple[VAE, History, Trainer]:
    """Builds the model under the strategy and trains it (resuming from workdir's
    checkpoints if any). The training code of `vae train` and `vae tune`.

    `first_stage`: the trained model a kind with a first stage is built on (M1+M2's M1,
    `pipelines/train/stages.py`), copied in before training."""
    train_cfg = config.train
    with cluster.strategy.scope():
        vae = build_model(config)
        if train_cfg.init_output_bias:  # a resumed run's checkpoint overwrites it
            init_output_bias(vae, config, datasets)
        if first_stage is not None:
            vae.load_first_stage(load_saved_model(first_stage))
    trainer = Trainer(vae, cluster, global_batch=train_cfg.batch_size, workdir=workdir,
                      checkpoint_every_steps=train_cfg.checkpoint_every_steps,
                      jit=train_cfg.jit, tensorboard=train_cfg.tensorboard,
                      lr_schedule=train_cfg.lr_schedule,
                      iwae_start_fraction=train_cfg.iwae_start_fraction,
                      kl_warmup_fraction=train_cfg.kl_warmup_fraction, seed=train_cfg.seed,
                      patience=train_cfg.early_stopping_patience, weight_decay=train_cfg.weight_decay)
    log.info("training a %s %s on %s: %d epochs of %d steps, global batch %d, %d replica(s)",
             config.model.architecture, config.model.kind, config.data.name, train_cfg.epochs,
             datasets.steps_per_epoch, train_cfg.batch_size, cluster.replicas)
    history = trainer.fit(datasets.train, datasets.validation, epochs=train_cfg.epochs,
                          steps_per_epoch=datasets.steps_per_epoch,
                          max_seconds=train_cfg.max_train_seconds, verbose=verbose)
    return vae, history, trainer


def train(config: RunConfig, workdir: str | Path, *, overwrite: bool = False,
          verbose: int | None = None, cluster: Cluster | None = None) -> dict:
    """Trains, saves, evaluates, draws and exports one model; returns the metrics (empty
    on a worker that is not the chief).

    A killed run resumes from `workdir/checkpoints` when the same command runs again.

    Raises:
        pipelines.workdir.WorkdirError: the workdir holds a finished run and `overwrite`
            is False, or an unfinished run of a different config.
        pipelines.data.DataError: the dataset cannot be found or prepared.
        pipelines.distribute.DistributionError: the strategy cannot run here.
    """
    from serving.export import export_model

    started = time.perf_counter()
    cluster = cluster or make_cluster(config.train.strategy, config.train.cpu_replicas)
    workdir = Path(workdir)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    keras.utils.set_random_seed(config.train.seed)
    set_precision(config)
    config, datasets = load_datasets(config, workers=cluster.workers)
    if cluster.is_chief:
        W.prepare(workdir, config, overwrite, source=datasets.source)
        if datasets.labelled is not None:
            W.write_json_atomic(workdir / W.LABELLED_FILE, datasets.labelled)
    trainer = None
    if cluster.workers == 1 and W.holds_trained_model(workdir):
        # An earlier run of this command trained, saved and then died (killed in its test
        # evaluation, say): its model is final, so evaluate it without training again.
        log.info("%s holds this run's trained model: evaluating it without training again",
                 workdir / W.MODEL_FILE)
        vae, history = load_trained(workdir)
    else:
        first = stages.first_stage(config, workdir, datasets.source, overwrite=overwrite, verbose=verbose,
                                   cluster=cluster)
        if first is not None:  # the first stage's run set the seeds and the precision of its own
            keras.utils.set_random_seed(config.train.seed)
            set_precision(config)
        vae, history, trainer = fit(config, datasets, cluster, workdir, verbose=verbose, first_stage=first)
        if not cluster.is_chief:
            return {}
        save_trained(vae, history, workdir)
    metrics, failure = evaluate_run(config, vae, history, datasets, workdir, verbose=verbose)
    metrics.update(replicas=cluster.replicas, strategy=cluster.name)
    version_dir = export_model(vae, workdir / W.EXPORT_DIR, config.train.model_name,
                               run_config=config.to_dict(), metrics=metrics,
                               class_names=datasets.class_names)
    metrics.update(export=str(version_dir))
    if failure is not None:
        raise EvaluationError(
            f"{failure}. The trained model is saved ({workdir / W.MODEL_FILE}) and exported "
            f"({version_dir}); run the same command again to evaluate it without training "
            f"(evaluation settings such as train.iwae_k=100 or train.eval_examples=2000 may change)")
    metrics.update(wall_seconds=time.perf_counter() - started)
    W.write_json_atomic(workdir / W.METRICS_FILE, metrics)
    if trainer is not None:
        trainer.clear_checkpoints()
    else:
        W.remove(workdir, (W.CHECKPOINT_DIR,))
    return metrics


class EvaluationError(Exception):
    """The test evaluation or the pictures failed after training (exit code 1); the trained
    model is saved and exported all the same."""


def save_trained(vae: VAE, history: History, workdir: Path) -> None:
    """Writes model.keras and history.json (with the optimizer's step count): from here on a
    run that dies is evaluated, not trained, when the same command runs again."""
    if vae.optimizer is not None:
        history.optimizer_steps = int(vae.optimizer.iterations.numpy())
    history.save(workdir)
    W.save_model_atomic(vae, workdir / W.MODEL_FILE)  # last: its presence marks training done


def load_trained(workdir: Path) -> tuple[VAE, History]:
    """The model and history `save_trained` left in `workdir`."""
    vae = load_saved_model(workdir / W.MODEL_FILE)
    return vae, History.load(workdir) or History()


def finish(config: RunConfig, vae: VAE, history: History, datasets: Datasets, workdir: Path,
           *, verbose: int = 2) -> dict:
    """Saves the model and history, evaluates on the test split and draws the pictures;
    returns the metrics (the caller writes them last).

    Raises:
        EvaluationError: the evaluation or the pictures failed (the model is saved).
    """
    save_trained(vae, history, workdir)
    metrics, failure = evaluate_run(config, vae, history, datasets, workdir, verbose=verbose)
    if failure is not None:
        raise EvaluationError(f"{failure}; the trained model is saved in {workdir / W.MODEL_FILE}")
    return metrics


def evaluate_run(config: RunConfig, vae: VAE, history: History, datasets: Datasets, workdir: Path,
                 *, verbose: int = 2) -> tuple[dict, str | None]:
    """The run's metrics: its training figures, then the test evaluation and the pictures.

    Returns:
        (metrics, failure): `failure` says what failed (the evaluation or the pictures),
        None when all went well; the metrics then hold what was measured before it.
    """
    train_cfg = config.train
    steady = history.epoch_seconds[1:] or history.epoch_seconds
    images_per_epoch = datasets.steps_per_epoch * train_cfg.batch_size
    metrics = dict(
        epochs=history.completed_epochs,
        optimizer_steps=history.optimizer_steps,
        train_images_per_second=images_per_epoch / statistics.median(steady) if steady else None,
        epoch_seconds=history.epoch_seconds,
        train_seconds=history.train_seconds,
        dataset=config.data.name,
    )
    test_ds, test_count = test_dataset(config, datasets)
    iwae_k, chosen = resolve_iwae_k(vae, train_cfg.iwae_k)
    log.info("evaluating on %d test images (IWAE k=%d, %s; train.iwae_k and train.eval_examples "
             "change it)", test_count, iwae_k, chosen)
    try:
        metrics.update(evaluate(vae, test_ds, iwae_k=iwae_k, batch_size=train_cfg.eval_batch_size,
                                seed=train_cfg.seed, num_examples=test_count, verbose=verbose == 1))
        metrics["eval_plan"]["iwae_k"] = chosen
    except Exception as error:  # noqa: BLE001 - reported, and the model is kept
        log.exception("the test evaluation failed")
        return metrics, f"the test evaluation failed ({type(error).__name__}: {error})"
    try:
        pictures = draw_pictures(vae, test_ds, workdir, seed=train_cfg.seed)
    except Exception as error:  # noqa: BLE001 - reported, and the model is kept
        log.exception("drawing the pictures failed")
        return metrics, f"drawing the pictures failed ({type(error).__name__}: {error})"
    metrics.update(pictures=sorted(p.name for p in pictures))
    return metrics, None


def draw_pictures(vae, test_ds, workdir: Path, seed: int = 0) -> list[Path]:
    """Writes samples.png and reconstructions.png, then the pictures of what the model
    declares it serves: classes.png (one row per class) for a model that takes labels,
    completions.png (observed half | completion | truth) for one that completes; for an
    unconditional model with a 2-D latent space latent_scatter.png and manifold.png."""
    first_images, first_labels = (t.numpy() for t in next(iter(test_ds)))
    paths = [
        plots.sample_grid(vae, workdir / "samples.png", seed=seed),
        plots.reconstruction_grid(vae, first_images, workdir / "reconstructions.png", labels=first_labels),
    ]
    if vae.takes_labels:
        paths.append(plots.class_grid(vae, workdir / "classes.png", seed=seed))
    if vae.completes:
        paths.append(plots.completion_grid(vae, first_images, workdir / "completions.png", seed=seed))
    if vae.latent_dim == 2 and vae.condition is None:
        codes, labels = [], []
        for images, batch_labels in test_ds:
            codes.append(np.asarray(vae.encode(images)[0]))
            labels.append(batch_labels.numpy())
        paths.append(plots.latent_scatter(np.concatenate(codes), np.concatenate(labels),
                                          workdir / "latent_scatter.png"))
        paths.append(plots.manifold_grid(vae, workdir / "manifold.png"))
    return paths


def export_run(workdir: str | Path, base_dir: str | Path, model_name: str | None = None,
               version: int | None = None) -> Path:
    """Exports the model a finished `vae train` run left in `workdir` (`vae export`).

    Args:
        workdir: holds `model.keras`, `config.json` and (optionally) `metrics.json`.
        base_dir: the export root; the version goes to `<base_dir>/<model_name>/<version>`.
        model_name: the served name (default: the run's `train.model_name`).
        version: the version number (default: the next one).

    Raises:
        pipelines.workdir.WorkdirError: `workdir` holds no trained model.
    """
    from serving.export import export_model

    workdir = Path(workdir)
    model_file = workdir / W.MODEL_FILE
    if not model_file.is_file():
        raise W.WorkdirError(f"no trained model at {model_file}; name a finished `vae train` --workdir")
    vae = load_saved_model(model_file)
    run_config = W.read_json(workdir / W.CONFIG_FILE, default=None)
    config = RunConfig.from_dict(run_config) if run_config else RunConfig()
    if model_name is None:
        model_name = config.train.model_name
    metrics = W.read_json(workdir / W.METRICS_FILE, default=None)
    names = data.dataset_class_names(config.data) if vae.takes_labels else None
    return export_model(vae, base_dir, model_name, version, run_config, metrics, class_names=names)
