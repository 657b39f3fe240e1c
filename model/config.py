"""Typed, frozen configuration for the VAE model.

`ConfigBase` gives every config dataclass of the project the same JSON round-trip and
dotted command-line overrides; `ModelConfig` describes the networks and the objective.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

C = TypeVar("C", bound="ConfigBase")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def _coerce(cls_name: str, name: str, hint: Any, value: Any) -> Any:
    """Converts a JSON or command-line value to the field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    where = f"{cls_name}.{name}"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(cls_name, name, inner, value)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        inner = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} entries, got {list(value)}")
            return tuple(_coerce(cls_name, name, a, v) for a, v in zip(args, value))
        return tuple(_coerce(cls_name, name, inner, v) for v in value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(hint, type) and issubclass(hint, ConfigBase):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be an object, got {value!r}")
        return hint.from_dict(value)
    return value


class ConfigBase:
    """JSON round-trip and overrides for frozen config dataclasses."""

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ConfigBase):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
        hints = cls._hints()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(known)}"
            )
        values = {k: _coerce(cls.__name__, k, hints[k], v) for k, v in data.items()}
        return cls(**values)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({err})") from None
        return cls.from_dict(data)

    def override(self: C, assignment: str) -> C:
        """Returns a copy with one dotted `path=value` assignment applied.

        The value is parsed as JSON when it can be (`3`, `1e-3`, `[64, 32]`, `true`),
        otherwise it is taken as a string; lists may also be written `64,32`.
        """
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise ConfigError(f"override {assignment!r} must look like section.field=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        return self._override_path(path.strip().split("."), value, assignment)

    def _override_path(self: C, parts: list[str], value: Any, assignment: str) -> C:
        name = parts[0]
        fields = {f.name for f in dataclasses.fields(self)}
        if name not in fields:
            raise ConfigError(
                f"override {assignment!r}: {type(self).__name__} has no field {name!r}; "
                f"known fields: {sorted(fields)}"
            )
        current = getattr(self, name)
        if len(parts) > 1:
            if not isinstance(current, ConfigBase):
                raise ConfigError(f"override {assignment!r}: {name!r} is not a section")
            new = current._override_path(parts[1:], value, assignment)
        else:
            new = _coerce(type(self).__name__, name, self._hints()[name], value)
        return dataclasses.replace(self, **{name: new})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")


@dataclasses.dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """The networks, the likelihood and the objective of a VAE.

    Args:
        image_shape: (height, width, channels) of the images.
        architecture: `"mlp"` (dense layers) or `"conv"` (strided convolutions).
        latent_dim: size of the latent vector z.
        hidden_units: widths of the dense hidden layers (encoder order; the decoder
            mirrors them). For `"conv"`, one dense layer of `hidden_units[0]` sits
            between the convolutions and the latent code when the tuple is not empty.
        conv_filters: filters of the stride-2 convolutions (encoder order).
        kernel_size: convolution kernel size.
        activation: hidden activation (any Keras activation name).
        likelihood: decoder distribution, `"bernoulli"` (logits) or `"gaussian"`.
        gaussian_log_scale: initial (or fixed) log standard deviation of the Gaussian.
        learn_gaussian_scale: learn the Gaussian log-scale (one scalar) by SGD.
        beta: weight of the KL term in the training objective.
        kl_warmup_steps: optimizer steps over which the KL weight ramps from 0 to beta.
    """

    image_shape: tuple[int, int, int] = (28, 28, 1)
    architecture: str = "mlp"
    latent_dim: int = 16
    hidden_units: tuple[int, ...] = (512, 256)
    conv_filters: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    activation: str = "relu"
    likelihood: str = "bernoulli"
    gaussian_log_scale: float = 0.0
    learn_gaussian_scale: bool = True
    beta: float = 1.0
    kl_warmup_steps: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _require(
            len(self.image_shape) == 3 and all(isinstance(d, int) and d > 0 for d in self.image_shape),
            f"{name}.image_shape must be three positive integers (H, W, C), got {self.image_shape!r}",
        )
        _require(
            self.architecture in ARCHITECTURES,
            f"{name}.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}",
        )
        _require(
            isinstance(self.latent_dim, int) and self.latent_dim > 0,
            f"{name}.latent_dim must be a positive integer, got {self.latent_dim!r}",
        )
        _require(
            all(isinstance(u, int) and u > 0 for u in self.hidden_units),
            f"{name}.hidden_units must be positive integers, got {self.hidden_units!r}",
        )
        _require(
            self.architecture != "mlp" or len(self.hidden_units) > 0,
            f"{name}.hidden_units must not be empty for the mlp architecture",
        )
        _require(
            all(isinstance(f, int) and f > 0 for f in self.conv_filters),
            f"{name}.conv_filters must be positive integers, got {self.conv_filters!r}",
        )
        _require(
            self.architecture != "conv" or len(self.conv_filters) > 0,
            f"{name}.conv_filters must not be empty for the conv architecture",
        )
        _require(
            isinstance(self.kernel_size, int) and self.kernel_size > 0,
            f"{name}.kernel_size must be a positive integer, got {self.kernel_size!r}",
        )
        _require(
            self.likelihood in LIKELIHOODS,
            f"{name}.likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}",
        )
        _require(self.beta >= 0, f"{name}.beta must be >= 0, got {self.beta!r}")
        _require(
            isinstance(self.kl_warmup_steps, int) and self.kl_warmup_steps >= 0,
            f"{name}.kl_warmup_steps must be an integer >= 0, got {self.kl_warmup_steps!r}",
        )
        _require(
            -20.0 <= self.gaussian_log_scale <= 20.0,
            f"{name}.gaussian_log_scale must be within [-20, 20], got {self.gaussian_log_scale!r}",
        )
