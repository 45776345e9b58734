"""The `avfusion` dispatcher: every command's module registers exactly the commands listed for it."""

import argparse
import importlib

import pytest

from pipeline.cli import COMMANDS, main


@pytest.mark.parametrize("module", sorted({m for m, _ in COMMANDS.values()}))
def test_module_registers_its_commands(module):
    sub = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(module).register(sub)
    assert set(sub.choices) == {name for name, (owner, _) in COMMANDS.items() if owner == module}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: avfusion {command}")


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(f"    {name} " in out for name in COMMANDS)


def test_unknown_command_fails():
    with pytest.raises(SystemExit) as exit_:
        main(["nope"])
    assert exit_.value.code == 2
