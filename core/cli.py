"""What every subcommand's parser shares: the help formatter, the config default in a help
text, and the old spellings of renamed or removed flags (hidden, warning once, still
working). Imports nothing of ours but `core`, nor TensorFlow (`vae --help` stays fast)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default after its help, unless the help states it itself or there is
    none to show (None: the config's default applies, and the help names it; a switch that
    is off). Descriptions and epilogs: paragraphs are filled to the terminal's width, and
    indented lines (the Examples, lists) are kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or default is False or default in ("", [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        out, paragraph = [], []
        for line in text.splitlines() + [""]:
            if line and not line[0].isspace():
                paragraph.append(line)
                continue
            if paragraph:
                out.append(textwrap.fill(" ".join(paragraph), width, initial_indent=indent,
                                         subsequent_indent=indent))
                paragraph = []
            out.append(indent + line)
        return "\n".join(out[:-1])


def config_default(config, field: str, section: str | None = None) -> str:
    """"default VALUE, section.field" for a help text, the value read from a config
    dataclass (a class: its field's declared default; an instance: its value), so that a
    help text never copies a literal; JSON spelling (null, true, [28, 28, 1]).

    Example:
        >>> config_default(TrainConfig, "epochs", "train")
        'default 10, train.epochs'
    """
    if isinstance(config, type):
        (spec,) = [f for f in dataclasses.fields(config) if f.name == field]
        value = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
    else:  # as config.json spells it (`DataConfig`'s source fields are flat there)
        value = config.to_dict()[field] if hasattr(config, "to_dict") else getattr(config, field)
    shown = json.dumps(list(value) if isinstance(value, tuple) else value).replace("%", "%%")  # argparse's %
    return f"default {shown}, {section}.{field}" if section else f"default {shown}"


def _warn(namespace, old: str, new: str) -> None:
    """Prints "--old is deprecated; use NEW" to stderr, once per parse and flag."""
    warned = namespace.__dict__.setdefault("_deprecations_warned", set())
    if old not in warned:
        warned.add(old)
        print(f"vae: warning: {old} is deprecated; use {new}", file=sys.stderr)


class _Renamed:
    """Mixed into the action of a renamed flag: warns when called by an old spelling."""

    old_spellings: frozenset = frozenset()

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old_spellings:
            _warn(namespace, option_string, self.option_strings[-1])
        super().__call__(parser, namespace, values, option_string)


def add_old_spelling(container, action: argparse.Action, old: str) -> None:
    """Lets `old` (e.g. "--base-dir") stand for the option of `action` (e.g. the one of
    "--model-base-path"): it parses as the new flag (the same action, so `required` and
    mutual exclusion hold), stays out of the help and the usage, and prints one warning
    line when used.

    Args:
        container: the parser or argument group `action` was added to.
        action: what `add_argument` returned for the new spelling.
        old: the old option string.
    """
    if not isinstance(action, _Renamed):
        action.__class__ = type(f"Renamed{type(action).__name__}", (_Renamed, type(action)), {})
    action.old_spellings = action.old_spellings | {old}
    # argparse looks options up in this table; the help lists `action.option_strings` only.
    container._option_string_actions[old] = action


class _RemovedFlag(argparse.Action):
    """A flag that became a SECTION.FIELD=VALUE override: warns and records the override."""

    def __init__(self, option_strings, dest, field: str, **kwargs):
        self.field = field
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        value = True if self.nargs == 0 else values
        assignment = f"{self.field}={json.dumps(value)}"
        _warn(namespace, option_string, assignment)
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), assignment])


def add_removed_flag(parser, old: str, field: str, *, type=None, switch: bool = False) -> None:
    """A flag removed earlier that scripts still use, e.g. `--checkpoint-every-steps 100`:
    hidden, it warns and adds `field=VALUE` to `args.removed_flag_overrides` (which the
    subcommand applies with its flags, before the user's own overrides)."""
    parser.add_argument(old, action=_RemovedFlag, field=field, dest="removed_flag_overrides",
                        nargs=0 if switch else None, type=type, default=[], help=argparse.SUPPRESS)


class _Deprecated(argparse.Action):
    """A hidden flag of its own dest that warns when used (its meaning differs from the
    new flag's, so the subcommand reads it itself)."""

    def __init__(self, option_strings, dest, use: str, **kwargs):
        self.use = use
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        _warn(namespace, option_string, self.use)
        setattr(namespace, self.dest, values)


def add_deprecated_flag(container, old: str, use: str, **kwargs) -> argparse.Action:
    """A hidden old flag that keeps its old meaning and warns "OLD is deprecated; use USE"
    (for a flag whose new spelling takes another value, e.g. `--base-dir ROOT` against
    `--model-base-path ROOT/NAME`). `kwargs` go to `add_argument` (dest, type, ...)."""
    return container.add_argument(old, action=_Deprecated, use=use, help=argparse.SUPPRESS, **kwargs)
