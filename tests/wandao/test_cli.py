"""The `wandao` dispatcher: every command is listed and its --help shows a runnable example."""

import pytest

from wandao.cli import _collect_commands, main

COMMANDS = sorted(_collect_commands())


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_an_example(name, capsys):
    try:  # argparse exits; a command that prints its own help may return 0 instead
        code = main([name, "--help"])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 0
    out = capsys.readouterr().out
    assert "example" in out.lower() and f"wandao {name}" in out


def test_unknown_command_is_an_error(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err
