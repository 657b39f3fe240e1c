"""The first stage of a kind built on another kind's trained model (`Kind.first_stage`:
M1+M2's M1, a vae).

`vae train --kind m1m2 --workdir W` trains M1 as an ordinary `vae train` run in `W/m1`
(the same data, the run's `train` settings, the model config the kind's class derives,
`first_stage_config`), then M2 in W on M1's codes. Each stage checkpoints in its own
folder, so the same command resumes whichever was killed; a finished M1 is not trained
again. `train.m1_workdir=PATH` takes a finished run instead, once its model settings and
its data are checked against the run's.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from model import kinds
from pipelines import workdir as W
from pipelines.config import RunConfig

log = logging.getLogger(__name__)

FIRST_STAGE_DIR = "m1"
# The data settings that must match between a first stage and the run built on it.
DATA_FIELDS = ("source", "dataset", "paths", "image_feature", "resize", "channels", "validation_fraction",
               "test_fraction", "split_seed", "fingerprint", "binarize", "train_split", "image_size")


class FirstStageError(W.WorkdirError):
    """`train.m1_workdir` is not a finished run this run can be built on."""


def first_stage_config(config: RunConfig) -> RunConfig:
    """The run config of the first stage: the kind's derived model, every training image
    (no labelled subset) and the run's training settings."""
    model = kinds.model_class(config.model).first_stage_config(config.model)
    data = dataclasses.replace(config.data, labelled_per_class=None, labelled_share=None)
    return dataclasses.replace(config, model=model, data=data,
                               train=dataclasses.replace(config.train, m1_workdir=None))


def first_stage(config: RunConfig, workdir: Path, source: dict | None, *, overwrite: bool, verbose: int,
                cluster) -> Path | None:
    """The trained first-stage model (`model.keras`) of a run, or None for a kind without
    one: `train.m1_workdir`'s, checked, or the one trained (or resumed) in `workdir/m1`.
    `source`: the run's own-data record (source.json), None for a tfds dataset.

    Raises:
        FirstStageError: `train.m1_workdir` is unfinished, of another model or other data.
    """
    if kinds.lookup(config.model.kind).first_stage is None:
        return None
    if config.train.m1_workdir is not None:
        given = Path(config.train.m1_workdir)
        check_first_stage(config, given, source)
        return given / W.MODEL_FILE
    from pipelines.train.run import train

    folder = workdir / FIRST_STAGE_DIR
    if overwrite or not (folder / W.METRICS_FILE).exists():
        stage = first_stage_config(config)
        log.info("first stage: training M1 (a %s) in %s", stage.model.kind, folder)
        train(stage, folder, overwrite=overwrite, verbose=verbose, cluster=cluster)
    else:
        log.info("first stage: %s holds a finished M1; training the second stage", folder)
    return folder / W.MODEL_FILE


def check_first_stage(config: RunConfig, folder: Path, source: dict | None) -> None:
    """Refuses a given first stage that is unfinished, cannot be the kind's first stage
    (its class's `first_stage_differences`: for M1+M2, the networks) or was trained on
    other data.

    Raises:
        FirstStageError: naming what differs and what to do.
    """
    recorded = W.read_json(folder / W.CONFIG_FILE, default=None)
    if recorded is None or not (folder / W.METRICS_FILE).exists():
        raise FirstStageError(f"train.m1_workdir={str(folder)!r} holds no finished `vae train` run (no "
                              f"{W.CONFIG_FILE} and {W.METRICS_FILE}); train M1 there first, or leave "
                              "train.m1_workdir unset to train it in this run's m1/ folder")
    theirs = RunConfig.from_dict(recorded)
    differ = kinds.model_class(config.model).first_stage_differences(config.model, theirs.model)
    # The first stage's data differ from the run's only in the labelled subset, not a DATA_FIELDS one.
    mine, recorded_data = config.data.to_dict(), theirs.data.to_dict()
    differ += [f"data.{name}={recorded_data.get(name)!r} (this run: {mine.get(name)!r})"
               for name in DATA_FIELDS if recorded_data.get(name) != mine.get(name)]
    recorded_source = W.read_json(folder / W.SOURCE_FILE, default=None) or {}
    if recorded_source.get("files") != (source or {}).get("files"):
        differ.append("its image files (source.json) differ from this run's")
    if differ:
        raise FirstStageError(f"train.m1_workdir={str(folder)!r} is not an M1 for this run: "
                              + "; ".join(differ) + ". Train M1 with this run's model and data settings, "
                              "or leave train.m1_workdir unset")
