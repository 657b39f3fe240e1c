"""How `vae tune` searches (tuner, objective, budget), and the layout of its workdir."""

from __future__ import annotations

import dataclasses

from core.config import ConfigBase, require, require_choice
from pipelines.tune.names import OBJECTIVES, TUNERS

# Trials of the Bayesian and random tuners when --max-trials is not given.
DEFAULT_MAX_TRIALS = 20

# === Workdir layout ===
SEARCH_RECORD = "tune_config.json"  # settings, space and base config of the search
PROJECT = "search"  # keras-tuner's project folder: oracle.json, <tuner id>.json, trial_*/
TRIALS_CSV = "trials.csv"
TRIALS_JSON = "trials.json"
OBJECTIVE_PLOT = "objective.png"
BEST_CONFIG = "best_config.json"
BEST_DIR = "best"  # the best model as a `vae train` workdir: model.keras, metrics.json, ...
EXPORTS = "exports"  # <model_name>/<version>/ SavedModels
RESULT = "tune_result.json"  # written last: marks a finished search
# In each trial folder:
TRIAL_RECORD = "run.json"  # attempts, tuner ids, and the result once the trial is done


@dataclasses.dataclass(frozen=True)
class TuneSettings(ConfigBase):
    """The search itself; the model, data and training come from the RunConfig.

    Args:
        space: a search-space JSON file (None: the default space of the package).
        tuner: `hyperband` (default), `bayesian` (Gaussian-process Bayesian
            optimisation) or `random`.
        objective: `val_loss`, the validation negative ELBO (beta = 1), or `iwae_nll`,
            the IWAE estimate of -log p(x) on the validation images; lower is better.
        max_trials: stop after this many trials (Hyperband: None runs one full
            Hyperband iteration; others: None means DEFAULT_MAX_TRIALS).
        max_epochs: epochs of each trial; for Hyperband the largest budget of a trial.
        hyperband_factor: Hyperband's reduction factor between rounds.
        iwae_k: importance samples of the `iwae_nll` objective.
        retrain: retrain the best configuration from scratch instead of taking the
            best trial's model.
    """

    space: str | None = None
    tuner: str = "hyperband"
    objective: str = "val_loss"
    max_trials: int | None = None
    max_epochs: int = 9
    hyperband_factor: int = 3
    iwae_k: int = 100
    retrain: bool = False

    def __post_init__(self) -> None:
        require_choice(self, "tuner", TUNERS)
        require_choice(self, "objective", OBJECTIVES)
        require(self, "max_trials", self.max_trials is None or self.max_trials >= 1, "must be >= 1")
        require(self, "max_epochs", self.max_epochs >= 1, "must be >= 1")
        require(self, "hyperband_factor", self.hyperband_factor >= 2, "must be >= 2")
        require(self, "iwae_k", self.iwae_k >= 1, "must be >= 1")

    @property
    def trial_limit(self) -> int | None:
        """The number of trials after which the search stops (None: the tuner decides)."""
        if self.max_trials is None and self.tuner != "hyperband":
            return DEFAULT_MAX_TRIALS
        return self.max_trials
