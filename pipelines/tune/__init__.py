"""Hyperparameter tuning of the VAE with keras-tuner (`vae tune`).

`tune(config, workdir, TuneSettings(...))` searches the space of a JSON file (default:
`default_space.json`) with Hyperband, Bayesian optimisation or random search, training
every trial with `pipelines.train.fit`, then reports the trials and exports the best
model. See `pipelines.tune.run` for the workdir layout.
"""

from pipelines.tune.run import TuneError, tune
from pipelines.tune.settings import TuneSettings
from pipelines.tune.space import SearchSpace

__all__ = ["SearchSpace", "TuneError", "TuneSettings", "tune"]
