"""The generated reference pages (docs/reference/cli.md, config.md) are what
scripts/gen_reference.py writes from the parsers and the config dataclasses today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = generator()


@pytest.mark.parametrize("page", sorted(GEN.PAGES), ids=str)
def test_the_committed_reference_page_is_what_the_generator_writes(page):
    path = GEN.PAGES[page]
    expected = GEN.pages()[path]
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing; run: {GEN.COMMAND}"
    assert path.read_text() == expected, (
        f"{path.relative_to(ROOT)} differs from what the parsers and configs give; run: {GEN.COMMAND}")


def test_every_config_field_has_a_documented_meaning():
    page = GEN.config_page()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert rows and [row.split("|")[1] for row in rows if row.rstrip().endswith("|  |")] == []


def test_every_visible_option_is_in_the_cli_page():
    import argparse

    from pipelines.cli import build_parser

    page = GEN.cli_page()
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in subparsers.choices.items():
        section = page.split(f"## vae {name}\n", 1)[1].split("\n## vae ", 1)[0]
        for action in sub._actions:
            if action.help != argparse.SUPPRESS:
                spelling = action.option_strings[-1] if action.option_strings else action.metavar
                assert f"{spelling}" in section, (name, spelling)
