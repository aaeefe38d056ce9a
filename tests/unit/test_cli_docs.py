"""docs/man/tunneld.1 and contrib/completion/* are what the CLI's parser generates now.

A CLI change without ``python -m tools.cli_docs`` fails here (CI runs this file
with the rest of tests/unit), naming the stale files.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tools import cli_docs


def test_the_committed_files_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_docs.main(["--check"])
    assert code == 0, capsys.readouterr().out + "\nrun `python -m tools.cli_docs` and commit"


def test_a_cli_change_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    page = cli_docs.man_page()
    assert "\\-\\-timeout" in page and "exit codes:" in page  # options and the epilog
    monkeypatch.setattr(cli_docs, "man_page", lambda: page.replace("timeout", "deadline"))
    assert cli_docs.MAN_PAGE.read_text() != cli_docs.generated()[cli_docs.MAN_PAGE]


def test_bash_completes_commands_and_options() -> None:
    script = cli_docs.COMPLETIONS["bash"]
    words = subprocess.run(
        ["bash", "-c",
         f"source {script}; COMP_WORDS=(tunneld up --); COMP_CWORD=2; COMP_LINE='tunneld up --';"
         " COMP_POINT=${#COMP_LINE}; _shtab_tunneld; printf '%s\\n' \"${COMPREPLY[@]}\""],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    assert {"--timeout", "--config", "--socket"} <= set(words), words


def test_zsh_completion_names_the_commands() -> None:
    text = Path(cli_docs.COMPLETIONS["zsh"]).read_text()
    assert text.startswith("#compdef tunneld")
    for cmd in ("run", "check", "status", "up", "down", "rekey", "reload", "pki"):
        assert f"    {cmd}:'" in text, cmd
