"""The built-in model classes, as `from model import VAE` (or CVAE, M2, M1M2, HierarchicalVAE)
reaches them, and `build_model`, the model of a config. Importing this module first
imports every registered kind's class (`model.kinds.import_classes`), which registers each
with Keras' serialization: after one such import, a saved `.keras` model of any kind
reloads."""

from __future__ import annotations

from model import kinds
from model.config import ModelConfig

kinds.import_classes()

from model.cvae import CVAE  # noqa: E402
from model.hierarchical import HierarchicalVAE  # noqa: E402
from model.m1m2 import M1M2  # noqa: E402
from model.m2 import M2  # noqa: E402
from model.vae import VAE  # noqa: E402

__all__ = ["CVAE", "HierarchicalVAE", "M1M2", "M2", "VAE", "build_model"]


def build_model(config: ModelConfig | dict, seed: int | None = None) -> VAE:
    """The (unbuilt) model of a config: its kind's class (`model.kinds.model_class`),
    built with `seed`.

    Example:
        >>> hvae = build_model(ModelConfig(density=DensityConfig(stochastic_layers=2)), seed=0)
        >>> hvae.build()  # every weight created
    """
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return kinds.model_class(config)(config, seed=seed)
