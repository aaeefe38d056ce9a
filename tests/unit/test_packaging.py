"""The wheel holds the runtime packages only: ``ike`` and ``tunneld``.

The namespace lab, the demo and the benchmark (``tools/``) and the tests need a
checkout (netns-scripts/, tests.tools) and must not ship. The wheel is built
offline from a copy of the checkout (no build isolation, no index: the installed
setuptools, a test dependency), so a stale ``build/`` in the checkout cannot hide
or add files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = {"ike", "tunneld"}
TOOLING_MODULES = {"lab", "demo", "bench", "bench_pki"}
IGNORED = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "run"
)


def build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=IGNORED, symlinks=True)
    out = tmp_path / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps"]
    cmd += ["--no-index", "--disable-pip-version-check", "-q", "-w", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("tunneld_ipsec-*.whl")  # the distribution name (pyproject.toml)
    return wheel


def test_wheel_holds_ike_and_tunneld_only(tmp_path: Path) -> None:
    with zipfile.ZipFile(build_wheel(tmp_path)) as whl:
        names = whl.namelist()
        dist_info = {Path(n).name: whl.read(n).decode() for n in names if ".dist-info/" in n}
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == RUNTIME_PACKAGES
    modules = {Path(name).stem for name in names if name.endswith(".py")}
    assert not modules & TOOLING_MODULES
    # the runtime is complete: the CLI entry point and both package roots are in it
    assert {"ike/__init__.py", "tunneld/__init__.py", "tunneld/cli.py"} <= set(names)
    # distributed as tunneld-ipsec ("tunneld" on the package index is another project),
    # installing the command `tunneld`
    assert "\nName: tunneld-ipsec\n" in dist_info["METADATA"]
    assert "tunneld = tunneld.cli:main" in dist_info["entry_points.txt"]
