"""The run folder: its file names, atomic JSON files, the resume check and `history.json`.

A run folder is what `vae train` writes, and what `vae tune` writes for each trial and
for its best model:

    config.json      the resolved RunConfig (written before training starts)
    source.json      own data: the files with their sizes and hashes, the classes, the
                     skipped bad inputs and the images of each split (checked on resume)
    labelled.json    semi-supervised (m2, m1m2) runs: which training images kept their label
    m1/              m1m2 runs: the first stage, M1, a run folder of its own
    checkpoints/     model, optimizer and progress while a run is unfinished
    logs/            TensorBoard: the model's loss terms, KL per latent unit, samples
    model.keras      the trained model (written atomically)
    history.json     per-epoch logs (`History`)
    exports/NAME/N/  the SavedModel served by TF Serving (one version per finished run)
    metrics.json     test metrics and training speed (written last: marks a finished run)
    *.png            samples, reconstructions, and for a 2-D latent the latent space;
                     conditional kinds: one row per class, or (observed | completion | truth)

`vae tune` and `vae encode` keep their own folders but use the same JSON files and the
same comparison of a recorded config with the one asked for on resume.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.files import read_json, write_json_atomic
from serving import contract as C

__all__ = ["CHECKPOINT_DIR", "CONFIG_FILE", "EXPORT_DIR", "HISTORY_FILE", "LABELLED_FILE", "LOG_DIR",
           "METRICS_FILE", "MODEL_FILE", "SOURCE_FILE", "History", "WorkdirError", "differences",
           "holds_trained_model", "prepare", "read_json", "remove", "save_model_atomic", "write_json_atomic"]

# === Layout ===
CONFIG_FILE = C.CONFIG_FILE  # the same names as the export's assets.extra/
METRICS_FILE = C.METRICS_FILE
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
LABELLED_FILE = "labelled.json"
SOURCE_FILE = "source.json"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
EXPORT_DIR = "exports"

# Fields that may change between a killed run and its resumption.
RESUMABLE_CHANGES = frozenset({
    "train.epochs", "train.max_train_seconds", "train.strategy", "train.cpu_replicas",
    "train.early_stopping_patience", "train.tensorboard", "data.data_dir", "data.download",
    # the test evaluation's settings: a run killed in its evaluation is evaluated again
    "train.iwae_k", "train.eval_examples", "train.eval_batch_size",
})


class WorkdirError(UserError):
    """The folder holds a finished run, or an unfinished run of another config."""


# === Resuming ===
def flatten(tree: dict, prefix: str = "", keep_whole: frozenset[str] = frozenset()) -> dict[str, Any]:
    """{"model": {"beta": 1}} -> {"model.beta": 1}; keys in `keep_whole` stay unflattened."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in keep_whole:
            out.update(flatten(value, f"{path}.", keep_whole))
        else:
            out[path] = value
    return out


def differences(recorded: dict, wanted: dict, allowed: frozenset[str] = frozenset(),
                keep_whole: frozenset[str] = frozenset(), limit: int = 6) -> str:
    """What differs between a recorded config and the one asked for, beyond `allowed`.

    Returns:
        "" when nothing else differs, else `key: old -> new; ...` (at most `limit` keys).
    """
    old, new = flatten(recorded, keep_whole=keep_whole), flatten(wanted, keep_whole=keep_whole)
    keys = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k) and k not in allowed]
    text = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys[:limit])
    return text + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def remove(workdir: Path, names) -> None:
    """Deletes the files and folders `names` in `workdir` (those that exist)."""
    for name in names:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def refuse_finished(workdir: Path, marker: str, what: str, kept: str = "") -> None:
    """Raises WorkdirError if `workdir/marker` (the file a finished run writes last) exists."""
    if (workdir / marker).exists():
        raise WorkdirError(
            f"{workdir} holds a finished {what} ({marker} exists); pass --overwrite to run it "
            f"again there{kept}, or choose another --workdir")


def prepare(workdir: Path, config, overwrite: bool, source: dict | None = None) -> None:
    """Makes `workdir` ready for a training run of `config` (a RunConfig) and records it,
    with `source` (own data's record: files, sizes, hashes, splits) in source.json.

    Raises:
        WorkdirError: it holds a finished run and `overwrite` is off, or an unfinished
            run of another config, or of files that have changed since (named).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove(workdir, (METRICS_FILE, MODEL_FILE, HISTORY_FILE, CONFIG_FILE, LABELLED_FILE,
                         SOURCE_FILE, CHECKPOINT_DIR, LOG_DIR))
    refuse_finished(workdir, METRICS_FILE, "run")
    if (workdir / CHECKPOINT_DIR).exists() or (workdir / MODEL_FILE).exists():
        _refuse_changed_files(workdir, source)
        recorded = read_json(workdir / CONFIG_FILE, default=None)
        if recorded is not None:  # as today's code spells it (fields moved since are mapped)
            recorded = type(config).from_dict(recorded).to_dict()
        changed = recorded is not None and differences(recorded, config.to_dict(), RESUMABLE_CHANGES)
        if changed:
            raise WorkdirError(
                f"{workdir} holds an unfinished run with another config ({changed}); run the "
                f"same command to resume it, or pass --overwrite to start anew")
    config.save(workdir / CONFIG_FILE)
    if source is not None:
        write_json_atomic(workdir / SOURCE_FILE, source)


def holds_trained_model(workdir: Path) -> bool:
    """Whether `workdir` holds an unfinished run whose training is done: `model.keras` is
    written once training ends, `metrics.json` once evaluation and export are done."""
    return (workdir / MODEL_FILE).is_file() and not (workdir / METRICS_FILE).exists()


def _refuse_changed_files(workdir: Path, source: dict | None) -> None:
    """Raises WorkdirError naming the files added, removed or changed since the unfinished
    run in `workdir` recorded its source.json."""
    recorded = read_json(workdir / SOURCE_FILE, default=None)
    if recorded is None or source is None:
        return
    old, new = recorded.get("files", {}), source.get("files", {})
    changed = []
    for path in sorted(old.keys() | new.keys()):
        if path not in new or path not in old:
            changed.append(f"{path} ({'removed' if path not in new else 'added'})")
        elif old[path] != new[path]:
            changed.append(f"{path} ({'size' if old[path]['bytes'] != new[path]['bytes'] else 'content'} changed)")
    if changed:
        shown = ", ".join(changed[:10]) + (f", and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise WorkdirError(
            f"{workdir} holds an unfinished run of other files: {shown} changed since it started; "
            f"restore them to resume it, or pass --overwrite to train anew on the files as they are")


def save_model_atomic(model, path: Path) -> Path:
    """Saves a Keras model to a temporary file beside `path`, then renames it into place."""
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    model.save(tmp)
    os.replace(tmp, path)
    return path


# === history.json ===
@dataclasses.dataclass
class History:
    """Per-epoch logs of a run and the seconds its epochs spent in training steps.

    `history.json` holds `{"metrics": {name: [one value per epoch]}, "epoch_seconds":
    [...], "completed_epochs": N, "train_seconds": T}` for `vae train`, every tune trial
    and tune's best model alike.
    """

    epochs: list[dict] = dataclasses.field(default_factory=list)  # this process's epochs only
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)  # whole epochs only
    completed_epochs: int = 0  # in the whole run, resumed epochs included
    train_seconds: float = 0.0  # this process's time in training steps
    optimizer_steps: int = 0  # in the whole run, set when the trained model is saved

    def metrics(self) -> dict[str, list[float]]:
        keys = self.epochs[0].keys() if self.epochs else []
        return {k: [e[k] for e in self.epochs] for k in keys}

    def to_dict(self) -> dict:
        return {"metrics": self.metrics(), "epoch_seconds": self.epoch_seconds,
                "completed_epochs": self.completed_epochs, "train_seconds": self.train_seconds,
                "optimizer_steps": self.optimizer_steps}

    @classmethod
    def from_dict(cls, data: dict) -> History:
        metrics = data.get("metrics", {})
        count = len(next(iter(metrics.values()), []))
        epochs = [{k: v[i] for k, v in metrics.items()} for i in range(count)]
        return cls(epochs, list(data.get("epoch_seconds", [])), int(data.get("completed_epochs", count)),
                   float(data.get("train_seconds", 0.0)), int(data.get("optimizer_steps", 0)))

    def save(self, workdir: Path) -> None:
        write_json_atomic(workdir / HISTORY_FILE, self.to_dict())

    @classmethod
    def load(cls, workdir: Path) -> History | None:
        data = read_json(workdir / HISTORY_FILE, default=None)
        return None if data is None else cls.from_dict(data)
