"""The model kinds (`ModelConfig.kind`): the one place a kind names its classes.

Each kind declares, in `REGISTRY`, the model class that a config of it builds for each
number of stochastic layers it supports (kind vae: the two-layer `HierarchicalVAE` for
`stochastic_layers=2`). What a kind serves, and the pictures a run draws of it, follow
from what its model class declares (`takes_labels`, `classifies`, `completes`: see
`model.vae.VAE`). A new kind is one module with its `VAE` subclass plus one line here.

Importing this module imports every model class, which registers each with Keras'
serialization (`from model import VAE` does, so any saved `.keras` file reloads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from model.config import ModelConfig
from model.cvae import CVAE
from model.hierarchical import HierarchicalVAE
from model.m2 import M2
from model.vae import VAE


@dataclasses.dataclass(frozen=True)
class Kind:
    """One model kind.

    Args:
        classes: the model class of each `stochastic_layers` count the kind supports.
    """

    classes: Mapping[int, type[VAE]]


REGISTRY: Mapping[str, Kind] = {
    "vae": Kind({1: VAE, 2: HierarchicalVAE}),
    "cvae": Kind({1: CVAE}),
    "m2": Kind({1: M2}),
}


def model_class(config: ModelConfig) -> type[VAE]:
    """The Keras model class a config builds (its kind's, for its stochastic layers)."""
    return REGISTRY[config.kind].classes[config.stochastic_layers]


def build_model(config: ModelConfig | dict, seed: int | None = None) -> VAE:
    """The (unbuilt) model of a config: `model_class(config)(config, seed=seed)`.

    Example:
        >>> hvae = build_model(ModelConfig(stochastic_layers=2), seed=0)  # a HierarchicalVAE
        >>> hvae.build()  # every weight created
    """
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return model_class(config)(config, seed=seed)
