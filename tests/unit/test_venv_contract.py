"""The README's two commands run from the checkout's own virtual environment
(issue 11): ``netns-scripts/install-deps.sh`` makes ``.venv/`` and installs the
project there, the demo, the tests and the benchmark run its interpreter, and
nothing is installed into the system interpreter."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "netns-scripts"


@pytest.mark.parametrize(
    "script", ["tests/run.sh", "netns-scripts/demo.sh", "netns-scripts/bench.sh"]
)
def test_commands_run_the_project_venv(script: str) -> None:
    text = (ROOT / script).read_text()
    runs = [ln for ln in text.splitlines() if re.search(r"\bexec\b|-m pytest", ln)]
    assert runs and all(".venv/bin/python" in ln or "$PY" in ln for ln in runs), runs
    if "$PY" in text:
        assert re.search(r"^PY=\.venv/bin/python\b", text, re.M)


def test_install_deps_leaves_the_system_interpreter_alone() -> None:
    text = (SCRIPTS / "install-deps.sh").read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert '"$BASE" -m venv "$VENV"' in code
    assert '"$VENV/bin/python" -m pip -q install' in code and '-e ".[test,dev]"' in code
    # pip runs only inside the environment: no pip on the base interpreter, no
    # --break-system-packages, no --user
    assert not re.search(r'"\$BASE" -m pip|python3 -m pip|\bpip3? install', code)
    assert "--break-system-packages" not in code and "--user" not in code


def test_venv_is_ignored_by_git() -> None:
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.skipif(
    Path(sys.prefix).name != ".venv", reason="not run from a .venv (e.g. a plain pytest)"
)
def test_suite_runs_from_this_checkouts_venv() -> None:
    """Under tests/run.sh the interpreter is this checkout's .venv, and the imported
    tunneld is this checkout's (an editable install of the same tree)."""
    import tunneld

    assert Path(sys.prefix).resolve() == (ROOT / ".venv").resolve()
    assert Path(tunneld.__file__).resolve().is_relative_to(ROOT)
