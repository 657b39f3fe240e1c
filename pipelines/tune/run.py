"""`vae tune`: search, report, and export the best model, in one resumable workdir.

Workdir layout:
    tune_config.json   the search's settings, space and base config (checked on resume)
    search/            keras-tuner's project: oracle.json, <tuner id>.json, trial_<id>/
                       (each trial folder: config.json, model.keras, history.json,
                       run.json, checkpoints/ while needed, logs/)
    trials.csv, trials.json, objective.png   every trial ranked by the objective
    best_config.json   the best trial's RunConfig (`vae train --config` takes it)
    best/              the best model as a `vae train` workdir: model.keras,
                       config.json, metrics.json (test split), history.json, pictures
    exports/<model_name>/<version>/   the best model's SavedModel (a new version per search)
    tune_result.json   written last: the search is finished

Running the same command again continues an interrupted search; `overwrite` starts a
new one (exports/ is kept: a server may be serving it; the next best is a new version).
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

import keras

from core.config import ConfigError
from model import kinds
from pipelines.config import RunConfig
from pipelines.distribute import make_cluster, tf_config
from pipelines.train import finish, fit, load_datasets, load_saved_model, set_precision
from pipelines.workdir import (CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, MODEL_FILE, History,
                               WorkdirError, differences, read_json, refuse_finished, remove,
                               write_json_atomic)
from pipelines.tune import report
from pipelines.tune.settings import (BEST_CONFIG, BEST_DIR, EXPORTS, OBJECTIVE_PLOT, PROJECT,
                                     RESULT, SEARCH_RECORD, TRIAL_RECORD, TRIALS_CSV, TRIALS_JSON,
                                     TuneSettings)
from pipelines.tune.space import SearchSpace
from pipelines.tune.tuner import VAETuner, make_oracle, role

log = logging.getLogger(__name__)

EXPORT_RECORD = "export.json"  # in best/: the version exported, so a rerun does not export twice

# Differences between an interrupted search and its resumption that are allowed.
_RESUMABLE_CHANGES = frozenset({"settings.max_trials", "settings.retrain", "config.train.strategy",
                                "config.train.cpu_replicas", "config.train.tensorboard",
                                "config.data.data_dir", "config.data.download"})


class TuneError(RuntimeError):
    """The search ended without a finished trial; the message says why."""


def tune(config: RunConfig, workdir: str | Path, settings: TuneSettings | None = None, *,
         overwrite: bool = False, verbose: int | None = None) -> dict:
    """Searches hyperparameters, reports the trials and exports the best model.

    In distributed tuning (KERASTUNER_* variables) every host runs this with the same
    arguments: the chief serves the oracle, then reports and exports; workers run
    trials and return an empty dict.

    Returns:
        A summary (`best_trial`, `objective`, `best_value`, `export`, `trials`, ...).

    Raises:
        ConfigError: a bad search-space file, setting or override (before any trial).
        WorkdirError: the workdir holds a finished search (and `overwrite` is False),
            or an unfinished search with other settings.
        TuneError: no trial finished.
    """
    started = time.perf_counter()
    settings = settings or TuneSettings()
    workdir = Path(workdir).absolute()
    where = role()
    _check_strategy(config)
    _check_kind(config)
    space = SearchSpace.load(settings.space, config)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    if where == "worker":
        if overwrite:
            log.warning("--overwrite is the chief's to apply; ignored on worker %s", where)
    else:
        _prepare_workdir(workdir, _search_record(config, settings, space), overwrite)
    cluster = None
    if where != "chief":  # the chief serves the oracle and trains nothing during the search
        cluster = make_cluster(config.train.strategy, config.train.cpu_replicas)
        set_precision(config)
    tuner = VAETuner(make_oracle(settings, space, config.train.seed), space=space,
                     base_config=config, settings=settings, cluster=cluster,
                     directory=str(workdir), project_name=PROJECT)
    tuner.search(verbose=verbose)
    if where == "worker":
        return {}
    if cluster is None:
        cluster = make_cluster(config.train.strategy, config.train.cpu_replicas)
        set_precision(config)
    return _conclude(tuner, space, settings, workdir, cluster, started, verbose)


# === Before the search ===
def _check_kind(config: RunConfig) -> None:
    first_stage = kinds.lookup(config.model.kind).first_stage
    if first_stage is not None:
        raise ConfigError(
            f"vae tune does not search model.kind={config.model.kind!r}, which trains on a finished "
            f"{first_stage!r} run: tune that run with --kind {first_stage}, then train this kind on it "
            "with vae train (train.m1_workdir=PATH)")


def _check_strategy(config: RunConfig) -> None:
    multiworker = config.train.strategy == "multiworker" or (
        config.train.strategy == "auto" and tf_config().get("cluster"))
    if multiworker:
        raise ConfigError(
            "vae tune runs each trial in one process: unset TF_CONFIG or choose train.strategy="
            "default or mirrored, and spread trials over hosts with distributed tuning "
            "(KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT)")


def _search_record(config: RunConfig, settings: TuneSettings, space: SearchSpace) -> dict:
    kept = {k: v for k, v in settings.to_dict().items() if k != "space"}
    return {"settings": kept, "space": space.to_dict(), "config": config.to_dict()}


def _prepare_workdir(workdir: Path, record: dict, overwrite: bool) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove(workdir, (RESULT, SEARCH_RECORD, TRIALS_CSV, TRIALS_JSON, OBJECTIVE_PLOT, BEST_CONFIG,
                         PROJECT, BEST_DIR))
    else:
        refuse_finished(workdir, RESULT, "search", kept=" (exports/ is kept)")
        previous = read_json(workdir / SEARCH_RECORD, default=None)
        # (Workers may have created an empty project folder before the chief started.)
        if previous is None and (workdir / PROJECT / "oracle.json").exists():
            raise WorkdirError(f"{workdir / PROJECT} holds a search but {SEARCH_RECORD} is missing; pass "
                               "--overwrite to start anew, or choose another --workdir")
        if previous is not None:
            if isinstance(previous.get("config"), dict):  # as today's code spells it (moved fields mapped)
                previous = {**previous, "config": RunConfig.from_dict(previous["config"]).to_dict()}
            changed = differences(previous, record, _RESUMABLE_CHANGES, keep_whole=frozenset({"space"}))
            if changed:
                raise WorkdirError(
                    f"{workdir} holds an unfinished search with other settings ({changed}); run "
                    "the same command to resume it, or pass --overwrite to start anew")
            log.info("resuming the search in %s", workdir)
    write_json_atomic(workdir / SEARCH_RECORD, record)


# === After the search (chief or single process) ===
def _conclude(tuner: VAETuner, space: SearchSpace, settings: TuneSettings, workdir: Path,
              cluster, started: float, verbose: int) -> dict:
    oracle = tuner.oracle
    objective = settings.objective
    records = {tid: read_json(Path(tuner.get_trial_dir(tid)) / TRIAL_RECORD, default=None)
               for tid in oracle.trials}
    rows = report.trial_rows(oracle, space, objective, records)
    best = next((r for r in rows if r["rank"] == 1), None)
    summary = {"tuner": settings.tuner, "direction": "min",
               "best_trial": best["trial_id"] if best else None}
    report.write_report(rows, workdir, objective, **summary)
    if verbose:
        print(f"\n{len(rows)} trials, ranked by {objective} (lower is better):")
        print(report.table(rows, objective), flush=True)
    if best is None:
        raise TuneError(f"no trial of the search in {workdir} finished; see the status and message "
                        f"of each trial in {workdir / PROJECT}/trial_*/trial.json")
    trial = oracle.trials[best["trial_id"]]
    trial_dir = Path(tuner.get_trial_dir(trial.trial_id))
    saved = trial_dir / CONFIG_FILE
    best_config = RunConfig.load(saved) if saved.is_file() else tuner.trial_config(trial)
    best_config.save(workdir / BEST_CONFIG)
    vae, metrics, source = _best_model(best_config, trial_dir, workdir / BEST_DIR, cluster,
                                       settings.retrain, verbose)
    metrics["tuning"] = {"best_trial": trial.trial_id, "objective": objective,
                         "objective_value": best["objective"], "tuner": settings.tuner,
                         "trials": len(rows), "model_from": source}
    write_json_atomic(workdir / BEST_DIR / METRICS_FILE, metrics)
    export = _export(vae, workdir, best_config, metrics, trial.trial_id)
    result = {
        "best_trial": trial.trial_id, "objective": objective, "best_value": best["objective"],
        "best_hyperparameters": best["hyperparameters"], "trials": len(rows),
        "finished_trials": sum(r["rank"] is not None for r in rows), "model_from": source,
        "test_nelbo": metrics.get("test_nelbo"), "test_iwae_nll": metrics.get("test_iwae_nll"),
        "best_config": str(workdir / BEST_CONFIG), "export": str(export) if export else None,
        "wall_seconds": time.perf_counter() - started,
    }
    for checkpoints in (workdir / PROJECT).glob(f"trial_*/{CHECKPOINT_DIR}"):
        shutil.rmtree(checkpoints, ignore_errors=True)  # kept only for Hyperband to continue
    write_json_atomic(workdir / RESULT, result)
    return result


def _best_model(config: RunConfig, trial_dir: Path, best_dir: Path, cluster, retrain: bool,
                verbose: int):
    """The best trial's model (or the same config retrained in best_dir), evaluated on
    the test split by `pipelines.train.finish`; returns (vae, metrics, source)."""
    if read_json(best_dir / CONFIG_FILE, default=None) not in (None, config.to_dict()):
        shutil.rmtree(best_dir)  # left by an interrupted run with another best trial
    best_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.train.seed)
    config, datasets = load_datasets(config)
    config.save(best_dir / CONFIG_FILE)
    model_file, trainer = trial_dir / MODEL_FILE, None
    if not retrain and model_file.is_file():
        log.info("taking the best model from %s", trial_dir)
        vae = load_saved_model(model_file, compile=True)
        history = History.load(trial_dir) or History(completed_epochs=config.train.epochs)
        source = f"trial {trial_dir.name.removeprefix('trial_')}"
    else:
        if not retrain:
            log.warning("%s is not here (trained on another host?): retraining the best "
                        "configuration", model_file)
        vae, history, trainer = fit(config, datasets, cluster, best_dir, verbose=verbose)
        source = "retrained"
    metrics = finish(config, vae, history, datasets, best_dir, verbose=verbose)
    if trainer is not None:
        trainer.clear_checkpoints()
    return vae, metrics, source


def _export(vae, workdir: Path, config: RunConfig, metrics: dict, trial_id: str) -> Path | None:
    """Exports the best model as the next version under workdir/exports/<model_name>/."""
    from pipelines.data import dataset_class_names
    from serving.export import export_model

    record_file = workdir / BEST_DIR / EXPORT_RECORD
    done = read_json(record_file, default=None)
    if done and done.get("trial") == trial_id and Path(done["path"]).is_dir():
        return Path(done["path"])  # exported before an interruption
    names = dataset_class_names(config.data) if vae.condition is not None else None
    path = export_model(vae, workdir / EXPORTS, config.train.model_name,
                        run_config=config.to_dict(), metrics=metrics, class_names=names)
    write_json_atomic(record_file, {"trial": trial_id, "path": str(path)})
    log.info("exported the best model (trial %s) to %s", trial_id, path)
    return path
