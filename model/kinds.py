"""The model class of each `ModelConfig.kind`: the one place a kind names a class."""

from __future__ import annotations

from model.cvae import CVAE
from model.m2 import M2
from model.vae import VAE

# A "vae" config with `stochastic_layers=2` builds `model.hierarchical.HierarchicalVAE`
# (VAE(config) picks it), so the map stays one class per kind.
MODEL_CLASSES = {"vae": VAE, "cvae": CVAE, "m2": M2}


def model_class(kind: str):
    """The Keras model class of a kind (`vae`, `cvae` or `m2`).

    Example:
        >>> model = model_class(config.kind)(config, seed=0)
    """
    return MODEL_CLASSES[kind]
