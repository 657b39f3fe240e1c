"""The model kinds (`ModelConfig.kind`): the one place a kind is declared.

Each kind declares, in `REGISTRY`, everything the rest of the project asks of it: its
model class for each number of stochastic layers it supports (kind vae: the two-layer
`HierarchicalVAE` for `density.stochastic_layers=2`), what its config may set (the
conditions, the priors, importance-weighted training, whether it reads `ModelConfig.m2`),
what it serves beyond encode/decode (labels, a half to complete, `classify`; the exporter,
the pictures and the command line's listing of signatures follow from it) and what `vae
tune`'s default space adds for it. `ModelConfig` checks a config against its kind's
declaration (`check`).

A new kind is one module with its `VAE` subclass plus one entry here (or one
`register(name, Kind(...))` call, as a test's kind does).

This module imports no TensorFlow: the model classes are named by import path and
imported when a model is built (`model_class`), so the `vae` parser and `ModelConfig`
read the registry cheaply. `import_classes()` imports them all, which registers each with
Keras' serialization, as loading a saved `.keras` file needs.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from core.config import ConfigError, require

if TYPE_CHECKING:
    from model.config import ModelConfig
    from model.vae import VAE

__all__ = ["Kind", "REGISTRY", "check", "import_classes", "lookup", "model_class", "names_where", "register"]

# The kind-specific sections of `ModelConfig` (`Kind.sections`).
SECTIONS = ("m2", "m1m2")
# What a conditional kind may be conditioned on: the class label, or one observed half of
# the image (the model's x is then the other half).
HALF_CONDITIONS = ("left_half", "right_half", "top_half", "bottom_half")
CONDITIONS = ("label", *HALF_CONDITIONS)


@dataclasses.dataclass(frozen=True)
class Kind:
    """One model kind.

    Args:
        summary: one line for `--help`.
        classes: the model class of each `stochastic_layers` count the kind supports: the
            class, or its import path `"module:Class"` (imported when first built).
        conditions: what a model of the kind may be conditioned on (`ModelConfig.condition`),
            the first the default; () for an unconditional kind (its `condition` stays
            `"label"`, unread).
        priors: the priors over its (top) latent layer (`ModelConfig.density.prior`), the
            first the default.
        importance_training: whether it trains on the k-sample IWAE bound
            (`ModelConfig.density.train_samples` > 1).
        classifies: whether it has q(y|x) and serves `classify`.
        semi_supervised: whether its runs keep only some training labels
            (`data.labelled_per_class`).
        sections: the kind-specific sections of `ModelConfig` it reads (`"m2"`,
            `"m1m2"`); every other kind leaves them at their defaults.
        first_stage: the kind of the run that trains first, whose model this kind's
            model is built on (`"vae"` for m1m2: the pipeline trains it, or takes a
            finished one; the model class's `first_stage_config` describes it and its
            `first_stage_differences` says whether a trained model can serve as one).
        tuning: entries `vae tune`'s default space adds for the kind (the space file's
            format, `pipelines/tune/space.py`).
        betas: the default KL weight (`ModelConfig.beta` when it is null) of each condition
            where it is not 1 (`beta_for`).
    """

    summary: str
    classes: Mapping[int, type | str]
    conditions: tuple[str, ...] = ()
    priors: tuple[str, ...] = ("gaussian",)
    importance_training: bool = False
    classifies: bool = False
    semi_supervised: bool = False
    sections: tuple[str, ...] = ()
    first_stage: str | None = None
    tuning: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    betas: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def beta_for(self, condition: str) -> float:
        """The default KL weight of a model of the kind on `condition` (1 unless `betas` says)."""
        return float(self.betas.get(condition, 1.0))

    @property
    def conditioned(self) -> bool:
        return bool(self.conditions)

    def serves(self, condition: str) -> tuple[bool, bool, bool]:
        """(takes_labels, classifies, completes) of a model of the kind on `condition`:
        what it serves beyond encode/decode (`serving.contract.kind_of_features`)."""
        takes_labels = self.conditioned and condition == "label"
        completes = self.conditioned and condition != "label"
        return takes_labels, self.classifies, completes

    def model_class(self, stochastic_layers: int) -> type[VAE]:
        """The model class for `stochastic_layers` (imported on first use)."""
        cls = self.classes[stochastic_layers]
        if isinstance(cls, str):
            module, _, name = cls.partition(":")
            cls = getattr(importlib.import_module(module), name)
        return cls


# `vae tune`'s entries for a kind with importance-weighted training.
IWAE_TUNING = {
    "model.density.train_samples": {"type": "choice", "values": [1, 5, 10], "default": 1},
    "train.iwae_start_fraction": {"type": "float", "min": 0.0, "max": 0.9, "default": 0.0,
                                  "when": {"model.density.train_samples": [5, 10]}},
}

REGISTRY: dict[str, Kind] = {
    "vae": Kind(
        summary="a VAE",
        classes={1: "model.vae:VAE", 2: "model.hierarchical:HierarchicalVAE"},
        # The VampPrior measured 1.5 nats better than N(0, I) in the same 600 s of
        # training (`benchmarks/quality.py`).
        priors=("vamp", "gaussian"),
        importance_training=True,
        tuning={
            "model.density.prior": {"type": "choice", "values": ["gaussian", "vamp"], "default": "vamp"},
            "model.density.pseudo_inputs": {"type": "int", "min": 25, "max": 500, "sampling": "log",
                                            "default": 100, "when": {"model.density.prior": ["vamp"]}},
            "model.density.stochastic_layers": {"type": "choice", "values": [1, 2], "default": 1},
            **IWAE_TUNING,
        },
    ),
    "cvae": Kind(
        summary="conditional, on a label or an observed half",
        classes={1: "model.cvae:CVAE"},
        conditions=CONDITIONS,
        importance_training=True,
        tuning=IWAE_TUNING,
        # On a label the KL weight 4 makes the label, not z, carry the class: images
        # generated at the default 10 epochs are named as their class 0.96 as often as
        # real ones, against 0.50 at beta 1, for 1.5 nats of -log p(x|y)
        # (`benchmarks/semi_supervised.py --parts cvae`).
        betas={"label": 4.0},
    ),
    "m2": Kind(
        summary="semi-supervised, a label cvae plus a classifier",
        classes={1: "model.m2:M2"},
        conditions=("label",),
        classifies=True,
        semi_supervised=True,
        sections=("m2",),
    ),
    "m1m2": Kind(
        summary="semi-supervised, an m2 over the codes of a vae trained first",
        classes={1: "model.m1m2:M1M2"},
        conditions=("label",),
        classifies=True,
        semi_supervised=True,
        sections=("m2", "m1m2"),
        first_stage="vae",
    ),
}


def register(name: str, kind: Kind) -> None:
    """Adds a kind to `REGISTRY` (a kind defined outside this package, e.g. a test's).

    Raises:
        ValueError: the name is taken.
    """
    if name in REGISTRY:
        raise ValueError(f"model kind {name!r} is already registered")
    REGISTRY[name] = kind


def lookup(name: str) -> Kind:
    """The kind `name`.

    Raises:
        ConfigError: no such kind (the message lists the registered ones).
    """
    if name not in REGISTRY:
        raise ConfigError(f"ModelConfig.kind must be one of {tuple(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


def check(config: ModelConfig) -> None:
    """Checks what a config sets against its kind's declaration (`ModelConfig` calls it).

    Raises:
        ConfigError: naming the field, e.g. a VampPrior on a kind without it.
    """
    kind, name = lookup(config.kind), repr(config.kind)
    if kind.conditioned:
        require(config, "condition", config.condition in kind.conditions,
                f"must be one of {kind.conditions} for model.kind={name}")
    else:
        require(config, "condition", config.condition == "label",
                f"must be 'label' for model.kind={name} (it is not conditioned)")
    for section in SECTIONS:
        if section not in kind.sections:
            values = getattr(config, section)
            for field in dataclasses.fields(values):
                require(values, field.name, getattr(values, field.name) == field.default,
                        f"is only used by model.kind={names_where(lambda k: section in k.sections)}")
    density = config.density
    require(density, "train_samples", density.train_samples == 1 or kind.importance_training,
            f"must be 1 for model.kind={name} (it has no importance-weighted training)")
    require(density, "prior", density.prior is None or density.prior in kind.priors,
            f"must be one of {kind.priors} or null for model.kind={name}")
    require(density, "stochastic_layers", density.stochastic_layers in kind.classes,
            f"must be one of {tuple(kind.classes)} for model.kind={name}")


def names_where(predicate: Callable[[Kind], bool]) -> str:
    """The kinds a predicate holds for, as messages spell them: `'m2'`, `'vae' or 'cvae'`."""
    return " or ".join(repr(name) for name, kind in REGISTRY.items() if predicate(kind))


def model_class(config: ModelConfig) -> type[VAE]:
    """The Keras model class a config builds (its kind's, for its stochastic layers)."""
    return lookup(config.kind).model_class(config.density.stochastic_layers)


def import_classes() -> None:
    """Imports every registered model class (registering each with Keras' serialization,
    which `keras.models.load_model` needs to rebuild a saved model of any kind)."""
    for kind in REGISTRY.values():
        for layers in kind.classes:
            kind.model_class(layers)
