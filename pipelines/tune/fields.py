"""How hyperparameter values land on a RunConfig: which names are tunable, their
JSON types, the derived names, and one `RunConfig.override` per section."""

from __future__ import annotations

import functools
import json
import types
import typing
from typing import Any

from core.config import is_section
from pipelines.config import RunConfig

# Names that are not config fields: each pair of numbers sets one tuple field.
DERIVED = {
    "hidden_width": "model.hidden_units",  # hidden_units = [hidden_width] * hidden_depth
    "hidden_depth": "model.hidden_units",
    "conv_filters_base": "model.conv_filters",  # conv_filters = [base, 2 base, 4 base, ...][:depth]
    "conv_depth": "model.conv_filters",
}

# Settings the tuner or the run itself decides, not the search.
NOT_TUNABLE = {
    "model.image_shape": "it is taken from the dataset",
    "model.likelihood": "negative ELBOs of discrete and continuous likelihoods do not compare",
    "train.epochs": "the tuner sets it (--max-epochs, or Hyperband's budget)",
    "train.model_name": "it names the export, not the model",
    "train.strategy": "it is where trials run, not what they train",
    "train.cpu_replicas": "it is where trials run, not what they train",
    "train.tensorboard": "it does not change the model",
    "train.eval_examples": "it defines the objective's data set",
    "train.eval_batch_size": "it does not change the model",
    "train.iwae_k": "it defines the test metric",
    "train.checkpoint_every_steps": "it does not change the model",
}


def canonical(path: str) -> str:
    """A `section.field` path as the config spells it now (`ConfigBase.MOVED`: an old name
    such as `model.prior` is `model.density.prior`); derived names stay as they are."""
    return path if path in DERIVED else ".".join(RunConfig.resolve_path(path.split(".")))


def value_of(config: RunConfig, path: str):
    """The value at a dotted path of a config (`model.density.prior`)."""
    return functools.reduce(getattr, path.split("."), config)


def field_type(path: str) -> str | None:
    """The JSON-level type of a field of RunConfig at a dotted path (`model.latent_dim`,
    `model.density.prior`), or None if unknown (or a whole section)."""
    *sections, name = path.split(".")
    cls = RunConfig
    for part in sections:
        cls = cls._hints().get(part)
        if not is_section(cls):
            return None
    hint = cls._hints().get(name)
    if not sections or hint is None or is_section(hint):
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return "list"
    return {int: "int", float: "float", str: "str", bool: "bool"}.get(hint)


def is_type(value, field_type: str) -> bool:
    """Whether a JSON value has the field's type (ints count as floats)."""
    if field_type == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if field_type == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if field_type == "list":
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, {"str": str, "bool": bool}[field_type])


def encode(value, field_type: str):
    """A value as keras-tuner holds it (a list becomes its JSON text; ints of float fields floats)."""
    if field_type == "list":
        return json.dumps(value)
    if field_type == "float":
        return float(value)
    return value


def decode(value, field_type: str):
    return json.loads(value) if field_type == "list" else value


def derived_values(base: RunConfig, values: dict[str, Any]) -> dict[str, list[int]]:
    """The tuple fields (`section.field` -> list) that the DERIVED names among `values` set."""
    out = {}
    model = base.model
    if "hidden_width" in values or "hidden_depth" in values:
        width = values.get("hidden_width", model.hidden_units[0] if model.hidden_units else 256)
        depth = values.get("hidden_depth", len(model.hidden_units))
        out["model.hidden_units"] = [width] * depth
    if "conv_filters_base" in values or "conv_depth" in values:
        first = values.get("conv_filters_base", model.conv_filters[0] if model.conv_filters else 32)
        depth = values.get("conv_depth", len(model.conv_filters))
        out["model.conv_filters"] = [first * 2**i for i in range(depth)]
    return out


def apply_values(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """One `RunConfig.override` per section, so a section is checked once, with all
    its new values (no invalid halfway state such as conv filters [] on an MLP...)."""
    fields = {k: v for k, v in values.items() if k not in DERIVED}
    fields.update(derived_values(base, {k: v for k, v in values.items() if k in DERIVED}))
    sections: dict[str, dict] = {}
    for path, value in fields.items():
        section, *inner, name = path.split(".")
        target = sections.setdefault(section, getattr(base, section).to_dict())
        for part in inner:  # a field of a section of the section (model.density.prior)
            target = target[part]
        target[name] = value
    config = base
    for section, merged in sections.items():
        config = config.override(f"{section}={json.dumps(merged)}")
    return config
