"""The README and the CLI's help stay in step."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from loader.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found += _commands(command, f"{full} ")
        else:
            found.append((full, command))
    return found


COMMANDS = _commands(main)


def _section(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"^### loader {re.escape(name)}\n(.*?)(?=^### |^## |\Z)", text,
                      re.MULTILINE | re.DOTALL)
    assert match, f"README has no '### loader {name}' section in its CLI reference"
    return match.group(1)


def test_readme_opens_with_the_two_setup_commands() -> None:
    """make demo and make test come first, before any other instruction."""
    head = README.read_text().split("## ", 1)[0]
    assert "make demo" in head and "make test" in head


@pytest.mark.parametrize("name,command", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_is_in_the_cli_reference_with_its_options(
        name: str, command: click.Command) -> None:
    """Each command has a README section naming every one of its long options."""
    section = _section(name)
    for param in command.params:
        if isinstance(param, click.Option):
            longs = [o for o in param.opts if o.startswith("--")]
            assert any(o in section for o in longs), f"{name}: README lacks {longs}"


@pytest.mark.parametrize("name,command", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_has_help_with_an_example(name: str, command: click.Command) -> None:
    """Each command's help says what it does and shows a runnable example."""
    assert command.help and "Example: loader " in command.help, name


def test_readme_has_no_section_for_a_command_that_does_not_exist() -> None:
    """Sections and commands match both ways."""
    documented = set(re.findall(r"^### loader (.+)$", README.read_text(), re.MULTILINE))
    assert documented == {n for n, _ in COMMANDS}
