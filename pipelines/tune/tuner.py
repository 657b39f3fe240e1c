"""The keras-tuner side of `vae tune`: oracles, and a Tuner whose trials are `vae train` runs.

Each trial maps its hyperparameters onto the RunConfig (`SearchSpace.apply`) and trains
with `pipelines.train.fit`, the training code of `vae train` (strategy, KL warm-up,
checkpoints, TensorBoard, early stopping). A trial's folder is a small train workdir:
`config.json`, `checkpoints/`, `logs/`, `model.keras`, `history.json`, and `run.json`
(attempts, which tuner ran it, and the result once done).

Resuming: keras-tuner retries the trial that was running when the process died; the
retry continues from that trial's checkpoints, and a trial whose `run.json` holds a
result is reported again without training. A Hyperband trial that continues an earlier
one (`tuner/trial_id`) starts from a copy of that trial's checkpoints, so it trains only
epochs `tuner/initial_epoch` to `tuner/epochs`.

Distributed tuning (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT):
the chief serves the oracle and trains nothing; workers ask it for trials.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time
from pathlib import Path

import keras
import keras_tuner as kt
import tensorflow as tf

from core.config import ConfigError
from pipelines import data
from pipelines.config import RunConfig
from pipelines.evaluate import evaluate
from pipelines.train import fit, load_datasets, load_saved_model
from pipelines.workdir import (CHECKPOINT_DIR, CONFIG_FILE, MODEL_FILE, read_json, save_model_atomic,
                               write_json_atomic)
from pipelines.tune.settings import TRIAL_RECORD, TuneSettings
from pipelines.tune.space import SearchSpace

log = logging.getLogger(__name__)

# Seconds a worker waits before asking again when the oracle has no trial for it yet
# (Hyperband waiting for a round to finish); keras-tuner itself asks again at once.
IDLE_SECONDS = 1.0
# Seconds between the chief's checks that every worker is done (keras-tuner: 20).
CHIEF_POLL_SECONDS = 1.0


def role() -> str:
    """`single`, or in distributed tuning `chief` or `worker` (from KERASTUNER_* variables)."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not os.environ.get(v)]
    if missing:
        raise ConfigError(f"KERASTUNER_ORACLE_IP is set, so distributed tuning needs "
                          f"{' and '.join(missing)} too (KERASTUNER_TUNER_ID=chief on the "
                          "oracle's host, tuner0, tuner1, ... on the workers)")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def save_state(path: str | Path, state: dict) -> None:
    """Writes a keras-tuner state file atomically."""
    write_json_atomic(path, state)


class AtomicSaves:
    """keras-tuner writes oracle.json and trial.json in place: a process killed while
    writing leaves a truncated file, and the search cannot be reopened. These oracles
    write a temporary file and rename it."""

    def save(self):
        save_state(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        save_state(Path(self._get_trial_dir(trial.trial_id)) / "trial.json", trial.get_state())


class HyperbandOracle(AtomicSaves, kt.oracles.HyperbandOracle):
    pass


class BayesianOracle(AtomicSaves, kt.oracles.BayesianOptimizationOracle):
    pass


class RandomOracle(AtomicSaves, kt.oracles.RandomSearchOracle):
    pass


def make_oracle(settings: TuneSettings, space: SearchSpace, seed: int) -> kt.Oracle:
    """The oracle of `settings.tuner` over `space`, minimising `settings.objective`."""
    objective = kt.Objective(settings.objective, direction="min")
    common = dict(objective=objective, hyperparameters=space.hyperparameters(),
                  seed=seed + 1)  # keras-tuner takes seed 0 as "no seed"
    if settings.tuner == "hyperband":
        oracle = HyperbandOracle(max_epochs=settings.max_epochs, factor=settings.hyperband_factor,
                                 **common)
        oracle.max_trials = settings.trial_limit  # HyperbandOracle has no such argument
        return oracle
    if settings.tuner == "bayesian":
        return BayesianOracle(max_trials=settings.trial_limit, **common)
    return RandomOracle(max_trials=settings.trial_limit, **common)


class VAETuner(kt.Tuner):
    """Runs trials with the training code of `vae train`.

    Args:
        oracle: from `make_oracle`.
        space: the search space (maps a trial's values onto `base_config`).
        base_config: the run config every trial starts from.
        settings: the search settings (objective, epochs, IWAE samples).
        cluster: this process's tf.distribute cluster (None on the chief, which does
            not train).
        **kwargs: `directory`, `project_name`, ... for `keras_tuner.Tuner`.
    """

    def __init__(self, oracle, *, space: SearchSpace, base_config: RunConfig,
                 settings: TuneSettings, cluster=None, **kwargs):
        self.space = space
        self.base_config = base_config
        self.settings = settings
        self.cluster = cluster
        self._asked_since_last_trial = False
        super().__init__(oracle, hypermodel=None, **kwargs)

    # === A trial ===
    def trial_config(self, trial) -> RunConfig:
        """The RunConfig of a trial (its hyperparameters, and its epoch budget)."""
        values = trial.hyperparameters.values
        config = self.space.apply(self.base_config, values)
        epochs = values.get("tuner/epochs", self.settings.max_epochs)
        return config.override(f"train.epochs={int(epochs)}")

    def run_trial(self, trial, *args, verbose: int = 2, **kwargs) -> dict:
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        record_file = trial_dir / TRIAL_RECORD
        record = read_json(record_file, default=None) or {"attempts": 0, "tuner_ids": []}
        if record.get("result"):
            log.info("trial %s finished before; reporting its result again", trial.trial_id)
            return record["result"]
        try:
            config = self.trial_config(trial)
        except ConfigError as err:
            raise kt.errors.FailedTrialError(f"invalid combination: {err}") from None
        writer = self.cluster.is_chief
        if writer:
            record["attempts"] += 1
            record["tuner_ids"].append(self.tuner_id)
            write_json_atomic(record_file, record)
        self._start_from_parent(trial, trial_dir)
        started = time.perf_counter()
        keras.backend.clear_session()
        gc.collect()
        keras.utils.set_random_seed(config.train.seed)
        try:
            config, datasets = load_datasets(config)
        except data.DataError as err:
            raise kt.errors.FailedTrialError(str(err)) from None
        if writer:
            config.save(trial_dir / CONFIG_FILE)
        vae, history, trainer = fit(config, datasets, self.cluster, trial_dir, verbose=verbose)
        # The weights the model ends with (the best epoch's under early stopping).
        metrics = {"val_loss": trainer.validate(datasets.validation)["val_loss"]}
        if self.settings.objective == "iwae_nll":
            scores = evaluate(vae, datasets.validation, iwae_k=self.settings.iwae_k,
                              batch_size=config.train.eval_batch_size, seed=config.train.seed,
                              verbose=False)
            metrics["iwae_nll"] = scores["test_iwae_nll"]
        metrics.update(epochs=float(history.completed_epochs),
                       optimizer_steps=float(vae.optimizer.iterations.numpy()),
                       wall_seconds=time.perf_counter() - started)
        metrics = {k: float(v) for k, v in metrics.items()}
        if writer:
            save_model_atomic(vae, trial_dir / MODEL_FILE)
            history.save(trial_dir)
            record["result"] = metrics
            write_json_atomic(record_file, record)
            if self.settings.tuner != "hyperband":  # only Hyperband continues a trial
                trainer.clear_checkpoints()
        return metrics

    def _start_from_parent(self, trial, trial_dir: Path) -> None:
        """A Hyperband trial that continues `tuner/trial_id` starts from its checkpoints."""
        parent = trial.hyperparameters.values.get("tuner/trial_id")
        if not parent or (trial_dir / CHECKPOINT_DIR).exists():
            return  # a fresh trial, or a retry that resumes from its own checkpoints
        source = Path(self.get_trial_dir(parent)) / CHECKPOINT_DIR
        if tf.train.latest_checkpoint(str(source)) is None:
            log.warning("trial %s continues trial %s, whose checkpoints are not here (%s): "
                        "training it from scratch", trial.trial_id, parent, source)
            return
        staging = trial_dir / f".{CHECKPOINT_DIR}.tmp"  # a killed copy is never taken for done
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        os.replace(staging, trial_dir / CHECKPOINT_DIR)
        log.info("trial %s continues trial %s from epoch %s", trial.trial_id, parent,
                 trial.hyperparameters.values.get("tuner/initial_epoch"))

    def load_model(self, trial):
        """The model a finished trial saved (`get_best_models` uses it)."""
        return load_saved_model(Path(self.get_trial_dir(trial.trial_id)) / MODEL_FILE, compile=True)

    def save_model(self, trial_id, model, step=0):
        pass  # run_trial saves each trial's model itself

    # === Searching ===
    def pre_create_trial(self):
        # Asking twice without a trial in between means the oracle said IDLE: wait a bit.
        if self._asked_since_last_trial:
            time.sleep(IDLE_SECONDS)
        self._asked_since_last_trial = True

    def on_trial_begin(self, trial):
        self._asked_since_last_trial = False
        super().on_trial_begin(trial)

    def search(self, *args, **kwargs):
        if role() != "chief":
            return super().search(*args, **kwargs)
        if "verbose" in kwargs:
            self.oracle.verbose = kwargs["verbose"]
        self.save()
        serve_oracle(self.oracle)
        # The oracle saved itself before dropping the last finished trial from its
        # ongoing trials: save again, or a resumed search would run that trial again.
        self.save()

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        save_state(self._get_tuner_fname(), self.get_state())

    def reload(self):
        super().reload()
        if self._is_worker():
            return
        # keras-tuner sends every trial that oracle.json lists as ongoing back for a
        # retry; one whose trial.json says COMPLETED finished after oracle.json was written.
        queue = self.oracle._retry_queue
        done = [t for t in queue if self.oracle.trials[t].status == kt.engine.trial.TrialStatus.COMPLETED]
        for trial_id in done:
            queue.remove(trial_id)
            log.info("trial %s finished before the search was interrupted; not running it again", trial_id)


def serve_oracle(oracle, poll_seconds: float = CHIEF_POLL_SECONDS) -> None:
    """keras-tuner's chief loop (`oracle_chief.start_server`), checking for the end
    every `poll_seconds` instead of every 20 s, and stopping its server."""
    import grpc
    from concurrent import futures

    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise ConfigError(f"the chief cannot listen on {address} (KERASTUNER_ORACLE_IP/PORT)")
    server.start()
    log.info("oracle listening on %s; waiting for workers", address)
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=5).wait()

