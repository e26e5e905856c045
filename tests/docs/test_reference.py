"""The generated references stay complete: every public name has an API entry, and the CLI page
shows every command and option of the parser (docs/development.md, "Documentation site")."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

import tenure
from tenure import aio

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference"


def _directives(page: str) -> list[str]:
    text = (REFERENCE / page).read_text(encoding="utf-8")
    return re.findall(r"^::: (\S+)\s*$", text, flags=re.MULTILINE)


def test_every_public_name_of_tenure_has_an_entry() -> None:
    documented = _directives("api.md")
    assert sorted(documented) == sorted(f"tenure.{name}" for name in tenure.__all__)


def test_every_public_name_of_aio_has_an_entry() -> None:
    documented = set(_directives("aio.md"))
    for name in aio.__all__:
        if getattr(aio, name) is getattr(tenure, name, None):
            continue  # the same object as tenure.NAME (errors, Holder...): documented there
        assert f"tenure.aio.{name}" in documented, name
    stale = {d for d in documented if d.removeprefix("tenure.aio.") not in aio.__all__}
    assert not stale


def _hook() -> ModuleType:
    pytest.importorskip("mkdocs", reason="the docs dependency group is not installed")
    spec = importlib.util.spec_from_file_location(
        "cli_reference", ROOT / "docs" / "_hooks" / "cli_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_shows_every_command_and_option() -> None:
    from tenure.cli import _build_parser

    hook = _hook()
    page: str = hook.render_cli_reference()
    top, returned = _build_parser()
    commands: dict[str, argparse.ArgumentParser] = hook._subcommands(top)
    assert set(returned) <= set(commands), "every command the parser returns is on the page"
    for name, parser in commands.items():
        section = page.split(f"## `tenure {name}`", 1)[1].split("\n## ", 1)[0]
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for flag in action.option_strings or [str(action.metavar or action.dest)]:
                assert f"`{flag}`" in section, (name, flag)
            if action.help:
                assert " ".join(action.help.split())[:40] in section, (name, action.help)
