"""Hyperparameter tuning of the VAE with keras-tuner (`vae tune`).

`tune(config, workdir, TuneSettings(...))` searches the space of a JSON file (default:
`default_space.json`) with Hyperband, Bayesian optimisation or random search, training
every trial with `pipelines.train.fit`, then reports the trials and exports the best
model. See `pipelines.tune.run` for the workdir layout.
"""

from core.lazy import lazy_attributes

# Loaded lazily (PEP 562): the `vae` parser reads `pipelines.tune.settings` without
# loading Keras and TensorFlow.
_WHERE = {
    "SearchSpace": "pipelines.tune.space",
    "TuneError": "pipelines.tune.run",
    "TuneSettings": "pipelines.tune.settings",
    "tune": "pipelines.tune.run",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_attributes(__name__, _WHERE)
