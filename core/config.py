"""The one config idiom of the project: frozen dataclasses with JSON round-trips, dotted
`section.field=value` overrides, one validation helper (`require`) and one error type
(`ConfigError`) whose message names the field. Model, data, training, tuning, encoding and
serving options all use it."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from core.errors import UserError

C = TypeVar("C", bound="ConfigBase")
T = TypeVar("T")


class ConfigError(UserError, ValueError):
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
    if is_section(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be an object, got {value!r}")
        return hint.from_dict(value)
    return value


class ConfigBase:
    """JSON round-trip and overrides for frozen config dataclasses.

    A subclass may set `FIELD_LABELS` (field -> the flag that sets it, for messages),
    `SECTION` (how messages name it when it is a section of another config, e.g.
    "ModelConfig.m2"; its class name by default) and `ERROR` (a `ConfigError` subclass of
    its own package) as `ClassVar`s.
    """

    FIELD_LABELS: ClassVar[dict[str, str]] = {}
    SECTION: ClassVar[str] = ""
    ERROR: ClassVar[type[ConfigError]] = ConfigError
    # Fields that moved into a section: the old name -> its dotted path now
    # ("alpha" -> "m2.alpha"). Config files and overrides that spell the old name still
    # load (`from_dict`, `override`).
    MOVED: ClassVar[dict[str, str]] = {}

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def _field_names(cls) -> list[str]:
        """The names `from_dict` and `override` take: the dataclass's fields, unless a
        subclass spells some of them otherwise (its `_hints` then types those names)."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def _from_values(cls: type[C], values: dict[str, Any]) -> C:
        """The config of coerced values keyed by `_field_names`."""
        return cls(**values)

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
        data = cls._moved_into_sections(data)
        hints = cls._hints()
        known = set(cls._field_names())
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(known)}"
            )
        values = {k: _coerce(cls.__name__, k, hints[k], v) for k, v in data.items()}
        return cls._from_values(values)

    @classmethod
    def _moved_into_sections(cls, data: dict[str, Any]) -> dict[str, Any]:
        """`data` with every field spelled by its old name (`MOVED`) put in its section."""
        if not cls.MOVED or not set(cls.MOVED) & set(data):
            return data
        data = dict(data)
        for old, path in cls.MOVED.items():
            if old in data:
                *sections, name = path.split(".")
                target = data
                for section in sections:
                    target[section] = target = dict(target.get(section) or {})
                if name in target and target[name] != data[old]:
                    raise ConfigError(f"{cls.__name__}: {old!r} (the old spelling of {path!r}) and {path!r} "
                                      f"disagree: {data[old]!r} and {target[name]!r}")
                target[name] = data.pop(old)
        return data

    @classmethod
    def resolve_path(cls, parts: list[str]) -> list[str]:
        """A dotted field path with old names (`MOVED`) spelled as they are now, at every level."""
        if not parts:
            return parts
        if parts[0] in cls.MOVED:
            parts = cls.MOVED[parts[0]].split(".") + parts[1:]
        hint = cls._hints().get(parts[0])
        if len(parts) > 1 and is_section(hint):
            return [parts[0], *hint.resolve_path(parts[1:])]
        return parts

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
        return self._override_path(self.resolve_path(path.strip().split(".")), value, assignment)

    def _override_path(self: C, parts: list[str], value: Any, assignment: str) -> C:
        name = parts[0]
        fields = set(self._field_names())
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


def is_section(hint: Any) -> bool:
    """Whether a field's type hint is a config of its own (a section: `RunConfig.model`,
    `ModelConfig.density`)."""
    return isinstance(hint, type) and issubclass(hint, ConfigBase)


def require(config: Any, field: str, condition: bool, expectation: str) -> None:
    """The one validation helper of every config dataclass (call it in `__post_init__`).

    Raises the config's `ERROR` (a `ConfigError`), "<label> <expectation>, got <value>",
    unless `condition`; the label is `<Class>.<field>` (`<SECTION>.<field>` when the config
    names its section), or the flag a config made from the command line names in
    `FIELD_LABELS`.

    Example:
        >>> require(self, "latent_dim", self.latent_dim > 0, "must be a positive integer")
    """
    if not condition:
        labels = getattr(config, "FIELD_LABELS", {})
        label = labels.get(field, f"{getattr(config, 'SECTION', '') or type(config).__name__}.{field}")
        error = getattr(config, "ERROR", ConfigError)
        raise error(f"{label} {expectation}, got {getattr(config, field)!r}")


def require_choice(config: Any, field: str, choices: tuple) -> None:
    """`require` that a field is one of `choices`."""
    require(config, field, getattr(config, field) in choices, f"must be one of {choices}")


def save_config(config: ConfigBase, path: str | Path) -> Path:
    """Writes a config as JSON, atomically."""
    from core.files import write_text_atomic

    return write_text_atomic(path, config.to_json() + "\n")


def load_config(cls: type[C], path: str | Path) -> C:
    """Reads a config JSON file; a `ConfigError` names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return cls.from_json(path.read_text())
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def read_config_file(path: str | Path, what: str, parse: Callable[[str], T]) -> T:
    """Reads a config file and parses its text with `parse`; errors name the file.

    Args:
        path: the file.
        what: what the file is, for messages ("batching parameters file").
        parse: text -> config; raises ConfigError for a bad value.

    Raises:
        ConfigError: the file cannot be read, or `parse` rejects it (prefixed with the path).
    """
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{what} {str(path)!r}: {err.strerror or err}") from None
    try:
        return parse(text)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
