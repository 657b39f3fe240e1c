"""Search-space files: which settings `vae tune` searches, over which values.

A space file is a JSON object; each key names a hyperparameter and each value says how
to draw it:

    {
      "model.architecture": {"type": "choice", "values": ["mlp", "conv"]},
      "model.latent_dim": {"type": "int", "min": 8, "max": 64, "step": 2, "sampling": "log"},
      "train.learning_rate": {"type": "float", "min": 1e-4, "max": 3e-3, "sampling": "log"},
      "hidden_depth": {"type": "int", "min": 1, "max": 3, "when": {"model.architecture": ["mlp"]}}
    }

Names are `section.field` paths of the run config (values land on it through
`RunConfig.override`, so `vae tune` builds and trains exactly what `vae train` would),
or one of the derived names (`fields.DERIVED`) that set a tuple field from two numbers. Types: `choice`
(`values`; lists for tuple fields such as `model.hidden_units`), `int` and `float`
(`min`, `max`, optional `step` and `sampling`: linear, log, reverse_log), `bool`, and
`fixed` (`value`). Any entry may be conditional: `"when": {"PARENT": [values]}` makes it
active only while the choice PARENT takes one of those values. A PARENT that is not an
entry of the space but a field of the base config (e.g. `model.kind`) decides once, when
the space is loaded: the entry is searched if the base config's value is listed and left
out otherwise, and so are the entries conditional on it. The default space is the
package's `default_space.json` plus the entries the base config's kind declares
(`model/kinds.py`: the VampPrior, two stochastic layers and IWAE training for the kinds
that have them).

Every problem fails with a `ConfigError` naming the entry, before any trial starts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

import keras_tuner as kt

from core.config import ConfigError
from model import kinds
from pipelines.config import RunConfig
from pipelines.tune import fields

DEFAULT_SPACE = "default_space.json"

KINDS = {
    "choice": {"values", "default"},
    "int": {"min", "max", "step", "sampling", "default"},
    "float": {"min", "max", "step", "sampling", "default"},
    "bool": {"default"},
    "fixed": {"value"},
}
SAMPLINGS = ("linear", "log", "reverse_log")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One hyperparameter of the space: its name, kind, spec and condition."""

    name: str
    kind: str
    spec: dict
    when: tuple[str, tuple] | None  # (parent name, parent values)
    field_type: str  # int, float, str, bool or list (a tuple field)


class SearchSpace:
    """A validated search space.

    Args:
        data: the parsed space file (name -> spec).
        base: the run config the values are applied to (used to check every value).
        source: where the space came from, for messages.

    Raises:
        ConfigError: naming the entry, for an unknown name, a wrong type, an empty
            range, min > max, or a value the config rejects.
    """

    def __init__(self, data: dict, base: RunConfig, source: str = "search space"):
        self.source = source
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: must be a JSON object of name -> spec, got {type(data).__name__}")
        if not data:
            raise ConfigError(f"{source}: no hyperparameters to search")
        self._raw = data
        entries = [self._parse(name, spec) for name, spec in data.items()]
        self.entries = self._settle_base_conditions(self._ordered(entries), base)
        if not self.entries:
            raise ConfigError(f"{source}: no hyperparameters to search: every entry's \"when\" "
                              "leaves it out for this base config")
        self._check_conflicts()
        self._check_conditions()
        for entry in self.entries:
            self._check_values(entry, base)
        self.hyperparameters()  # keras-tuner's own checks (e.g. log sampling from 0)

    # === Loading ===
    @classmethod
    def load(cls, path: str | Path | None, base: RunConfig) -> "SearchSpace":
        """Reads a space file; None reads the default space: the package's, plus the entries
        the base config's kind declares (`model.kinds.Kind.tuning`)."""
        if path is None:
            text = resources.files("pipelines.tune").joinpath(DEFAULT_SPACE).read_text()
            source = f"default search space ({DEFAULT_SPACE} and model.kind={base.model.kind!r}'s entries)"
        else:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"search space file {str(path)!r} does not exist")
            text, source = path.read_text(), f"search space {path}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{source}: not valid JSON ({err})") from None
        if path is None:
            data.update(copy.deepcopy(kinds.lookup(base.model.kind).tuning))
        return cls(data, base, source)

    def to_dict(self) -> dict:
        """The space as written (for the search record)."""
        return json.loads(json.dumps(self._raw))

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    # === Parsing ===
    def _error(self, name: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: entry {name!r}: {message}")

    def _parse(self, name: str, spec) -> Entry:
        name = fields.canonical(name)  # (a field's old name, e.g. model.prior: model.density.prior)
        if name in fields.NOT_TUNABLE:
            raise self._error(name, f"cannot be tuned: {fields.NOT_TUNABLE[name]}")
        if name.startswith("data."):
            raise self._error(name, "cannot be tuned: data settings change the images the "
                                    "objective is measured on")
        field_type = "int" if name in fields.DERIVED else fields.field_type(name)
        if field_type is None:
            raise self._error(name, "unknown hyperparameter; use a model.* or train.* config field "
                                    "(e.g. model.latent_dim, train.learning_rate) or one of "
                                    f"{sorted(fields.DERIVED)}")
        if not isinstance(spec, dict):
            raise self._error(name, f'must be an object like {{"type": "choice", "values": [...]}}, '
                                    f"got {spec!r}")
        kind = spec.get("type")
        if kind not in KINDS:
            raise self._error(name, f"\"type\" must be one of {sorted(KINDS)}, got {kind!r}")
        unknown = sorted(set(spec) - KINDS[kind] - {"type", "when"})
        if unknown:
            raise self._error(name, f"unknown key(s) {unknown} for type {kind!r}; allowed: "
                              f"{sorted(KINDS[kind] | {'type', 'when'})}")
        when = spec.get("when")
        if when is not None:
            if not (isinstance(when, dict) and len(when) == 1):
                raise self._error(name, f'"when" must name one parent, like '
                                        f'{{"model.architecture": ["conv"]}}, got {when!r}')
            ((parent, parent_values),) = when.items()
            if not isinstance(parent_values, list) or not parent_values:
                raise self._error(name, f'"when" needs a non-empty list of {parent!r} values, '
                                        f"got {parent_values!r}")
            when = (fields.canonical(parent),
                    tuple(json.dumps(v) if isinstance(v, list) else v for v in parent_values))
        body = {k: v for k, v in spec.items() if k not in ("type", "when")}
        self._check_spec(name, kind, body, field_type)
        return Entry(name, kind, body, when, field_type)

    def _check_spec(self, name: str, kind: str, spec: dict, field_type: str) -> None:
        what = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                "list": "a list of integers"}[field_type]
        if kind == "choice":
            values = spec.get("values")
            if not isinstance(values, list):
                raise self._error(name, f"\"values\" must be a list, got {values!r}")
            if not values:
                raise self._error(name, "empty range: \"values\" is an empty list")
            for value in values:
                if not fields.is_type(value, field_type):
                    raise self._error(name, f"wrong type: value {value!r} is not {what}")
            if len({json.dumps(v) for v in values}) != len(values):
                raise self._error(name, f"\"values\" has duplicates: {values}")
        elif kind in ("int", "float"):
            if kind == "float" and field_type != "float":
                raise self._error(name, f"wrong type: type \"float\" for a field that takes {what}")
            if kind == "int" and field_type not in ("int", "float"):
                raise self._error(name, f"wrong type: type \"int\" for a field that takes {what}")
            number = "int" if kind == "int" else "float"
            word = "an integer" if kind == "int" else "a number"
            for key in ("min", "max"):
                if key not in spec:
                    raise self._error(name, f'needs "{key}"')
                if not fields.is_type(spec[key], number):
                    raise self._error(name, f'wrong type: "{key}" must be {word}, got {spec[key]!r}')
            if "step" in spec and (not fields.is_type(spec["step"], number) or spec["step"] <= 0):
                raise self._error(name, f'"step" must be {word} > 0, got {spec["step"]!r}')
            if spec["min"] > spec["max"]:
                raise self._error(name, f"min > max ({spec['min']} > {spec['max']})")
            if spec["min"] == spec["max"]:
                raise self._error(name, f"empty range: min == max ({spec['min']}); "
                                        'use {"type": "fixed", "value": ...}')
            if spec.get("sampling", "linear") not in SAMPLINGS:
                raise self._error(name, f"\"sampling\" must be one of {SAMPLINGS}, got {spec['sampling']!r}")
        elif kind == "bool":
            if field_type != "bool":
                raise self._error(name, f"wrong type: type \"bool\" for a field that takes {what}")
        elif kind == "fixed":
            if "value" not in spec or not fields.is_type(spec["value"], field_type):
                raise self._error(name, f"wrong type: \"value\" must be {what}, got {spec.get('value')!r}")
        if "default" in spec:
            default = spec["default"]
            ok = fields.is_type(default, "int" if kind == "int" else field_type)
            if ok and kind == "choice":
                ok = json.dumps(default) in {json.dumps(v) for v in spec["values"]}
            elif ok and kind in ("int", "float"):
                ok = spec["min"] <= default <= spec["max"]
            if not ok:
                raise self._error(name, f"\"default\" {default!r} is not one of the entry's values")

    def _ordered(self, entries: list[Entry]) -> list[Entry]:
        """Parents before their conditional children (keras-tuner needs that order)."""
        by_name = {e.name: e for e in entries}
        done: list[Entry] = []
        seen: set[str] = set()

        def visit(entry: Entry, path: tuple[str, ...]) -> None:
            if entry.name in seen:
                return
            if entry.name in path:
                raise self._error(entry.name, f"conditions form a cycle: {' -> '.join(path + (entry.name,))}")
            if entry.when and entry.when[0] in by_name:
                visit(by_name[entry.when[0]], path + (entry.name,))
            seen.add(entry.name)
            done.append(entry)

        for entry in entries:
            visit(entry, ())
        return done

    def _settle_base_conditions(self, entries: list[Entry], base: RunConfig) -> list[Entry]:
        """Decides the conditions on base config fields (parents before children): such an
        entry stays, unconditional, if the base's value is listed; an entry whose parent
        entry was left out is left out too. Other conditions stay for `_check_conditions`."""
        names = {e.name for e in entries}
        kept: dict[str, Entry] = {}
        for entry in entries:
            if entry.when and entry.when[0] not in kept:
                parent, wanted = entry.when
                ftype = fields.field_type(parent)
                if parent not in names and ftype is not None:
                    wrong = [v for v in wanted if not fields.is_type(fields.decode(v, ftype), ftype)]
                    if wrong:
                        raise self._error(entry.name, f'"when" value {wrong[0]!r} has the wrong type for '
                                                      f"the config field {parent!r} ({ftype})")
                    value = fields.value_of(base, parent)
                    if fields.encode(list(value) if isinstance(value, tuple) else value, ftype) not in wanted:
                        continue
                    entry = dataclasses.replace(entry, when=None)
                elif parent in names:
                    continue  # its parent was left out
            kept[entry.name] = entry
        return list(kept.values())

    def _check_conflicts(self) -> None:
        names = set(self.names)
        for derived, field in fields.DERIVED.items():
            if derived in names and field in names:
                raise self._error(derived, f"conflicts with entry {field!r}: both set {field}")

    def _check_conditions(self) -> None:
        by_name = {e.name: e for e in self.entries}
        for entry in self.entries:
            if not entry.when:
                continue
            parent_name, wanted = entry.when
            parent = by_name.get(parent_name)
            if parent is None:
                raise self._error(entry.name, f'"when" names {parent_name!r}, which is neither an '
                                              "entry of the space nor a field of the run config")
            if parent.kind not in ("choice", "bool", "fixed"):
                raise self._error(entry.name, f'"when" parent {parent_name!r} must be a choice, '
                                              "bool or fixed entry")
            allowed = self._values_of(parent)
            for value in wanted:
                if value not in allowed:
                    raise self._error(entry.name, f'"when" value {value!r} is not a value of '
                                                  f"{parent_name!r} (unknown choice value; it "
                                                  f"takes {allowed})")

    @staticmethod
    def _values_of(entry: Entry) -> list:
        if entry.kind == "choice":
            return [fields.encode(v, entry.field_type) for v in entry.spec["values"]]
        if entry.kind == "bool":
            return [True, False]
        return [fields.encode(entry.spec["value"], entry.field_type)]

    def _check_values(self, entry: Entry, base: RunConfig) -> None:
        """Applies each end of the entry's range to the base config. A value passes if some
        context accepts it: the space's fixed entries, plus its condition's parent value
        or any one value of another choice (e.g. `[]` hidden units needs conv)."""
        if entry.kind == "choice":
            candidates = entry.spec["values"]
        elif entry.kind in ("int", "float"):
            candidates = [entry.spec["min"], entry.spec["max"]]
        elif entry.kind == "bool":
            candidates = [True, False]
        else:
            candidates = [entry.spec["value"]]
        others = [e for e in self.entries if e.name != entry.name and not e.when]
        fixed = {e.name: e.spec["value"] for e in others if e.kind == "fixed"}
        if entry.when:
            parent = next(e for e in self.entries if e.name == entry.when[0])
            contexts = [{**fixed, parent.name: fields.decode(v, parent.field_type)} for v in entry.when[1]]
        else:
            contexts = [fixed] + [{**fixed, e.name: v} for e in others if e.kind in ("choice", "bool")
                                  for v in (e.spec["values"] if e.kind == "choice" else (True, False))]
        for value in candidates:
            errors = []
            for context in contexts:
                try:
                    fields.apply_values(base, {**context, entry.name: value})
                    break
                except ConfigError as err:
                    errors.append(err)
            else:
                raise self._error(entry.name, f"value {value!r} is invalid: {errors[0]}")

    # === Use ===
    def hyperparameters(self) -> kt.HyperParameters:
        """The space as keras-tuner `HyperParameters`, conditions included."""
        hp = kt.HyperParameters()
        for entry in self.entries:
            try:
                if entry.when:
                    with hp.conditional_scope(entry.when[0], list(entry.when[1])):
                        self._declare(hp, entry)
                else:
                    self._declare(hp, entry)
            except (ValueError, TypeError) as err:
                raise self._error(entry.name, str(err)) from None
        return hp

    @staticmethod
    def _declare(hp: kt.HyperParameters, entry: Entry) -> None:
        spec, name, ftype = entry.spec, entry.name, entry.field_type
        default = fields.encode(spec["default"], ftype) if "default" in spec else None
        if entry.kind == "choice":
            values = [fields.encode(v, ftype) for v in spec["values"]]
            hp.Choice(name, values, default=default, ordered=False if ftype == "list" else None)
        elif entry.kind == "int":
            hp.Int(name, spec["min"], spec["max"], step=spec.get("step"),
                   sampling=spec.get("sampling", "linear"), default=spec.get("default"))
        elif entry.kind == "float":
            hp.Float(name, float(spec["min"]), float(spec["max"]), step=spec.get("step"),
                     sampling=spec.get("sampling", "linear"), default=default)
        elif entry.kind == "bool":
            hp.Boolean(name, default=bool(spec.get("default", False)))
        else:
            hp.Fixed(name, fields.encode(spec["value"], ftype))

    def apply(self, base: RunConfig, values: dict[str, Any]) -> RunConfig:
        """The run config of a trial: `base` with the trial's (active) values applied.

        Raises:
            ConfigError: the combination is invalid (e.g. no hidden layer for an MLP).
        """
        types_ = {e.name: e.field_type for e in self.entries}
        decoded = {k: fields.decode(v, types_[k]) for k, v in values.items() if k in types_}
        return fields.apply_values(base, decoded)

    def decoded(self, values: dict[str, Any]) -> dict[str, Any]:
        """A trial's values of the space's entries as written in the file (None: inactive)."""
        return {e.name: None if values.get(e.name) is None else fields.decode(values[e.name], e.field_type)
                for e in self.entries}
