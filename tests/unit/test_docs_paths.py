"""The docs name only files that exist: every repository path in README.md and
docs/*.md (``tunneld/peer.py``, ``tests/netns/``, ``conf/hub.toml``, ...) is in
the checkout. Paths on an installed system (``/etc/tunneld/...``) and ratios
such as ``tunneld/openvpn`` are not repository paths and are not checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = "tunneld|ike|tests|tools|netns-scripts|conf|contrib|docs|\\.ci"
# a top-level directory, then either a file with a known suffix or a directory
PATH = re.compile(
    rf"(?<![\w./@-])(?:{TOP})/(?:[\w.@-]+/)*"
    rf"(?:[\w@-]+\.(?:py|sh|toml|md|service|json|1|bash|in)\b|(?=[\s`),;:]|$))"
)


def repository_paths(text: str) -> set[str]:
    found = set()
    for match in PATH.finditer(text):
        path = match.group(0)
        if path.endswith("/") or "." in path.rsplit("/", 1)[-1]:
            found.add(path)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_a_doc_names_exists(doc: Path) -> None:
    missing = sorted(p for p in repository_paths(doc.read_text()) if not (ROOT / p).exists())
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_check_finds_paths() -> None:
    text = "see `tunneld/peer.py`, tests/netns/ and /etc/tunneld/gw-a.toml, tunneld/openvpn 2.1"
    assert repository_paths(text) == {"tunneld/peer.py", "tests/netns/"}
