"""The man page and shell completions, generated from the CLI's own argparse parser.

    python -m tools.cli_docs           # rewrite docs/man/tunneld.1, contrib/completion/*
    python -m tools.cli_docs --check   # exit 1 and name the stale files (tests do this)

The page comes from ``argparse-manpage``, the bash and zsh completions from
``shtab`` (both in the ``dev`` extra; tunneld itself never imports them).
Options that take a path (``type=Path``) complete file names, the PKI's
``--out`` and ``--ca`` directory names. The output depends only on the parser
and the package version: the width is fixed and the page's date field holds
the version, so a regeneration without a CLI change makes no diff.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAN_PAGE = ROOT / "docs" / "man" / "tunneld.1"
COMPLETIONS = {
    "bash": ROOT / "contrib" / "completion" / "tunneld.bash",
    "zsh": ROOT / "contrib" / "completion" / "_tunneld",
}
DIRECTORY_OPTIONS = {"out", "ca"}  # tunneld pki: directories, not files

MAN_SEE_ALSO = """
.SH SEE ALSO
.BR systemd.service (5);
docs/operations.md, docs/configuration.md and contrib/systemd/tunneld@.service
in the tunneld source tree.
"""


def parser() -> argparse.ArgumentParser:
    os.environ["COLUMNS"] = "80"  # argparse wraps help text to the terminal: fix it
    from tunneld.cli import _parser

    return _parser()


def _actions(p: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in p._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _actions(sub)


def _mark_paths(p: argparse.ArgumentParser) -> None:
    import shtab

    for action in _actions(p):
        if action.type is Path:
            kind = shtab.DIRECTORY if action.dest in DIRECTORY_OPTIONS else shtab.FILE
            action.complete = kind  # type: ignore[attr-defined]


def man_page() -> str:
    from argparse_manpage.manpage import Manpage

    from tunneld import __version__

    data = {
        "project_name": "tunneld",
        "version": __version__,
        "date": f"tunneld {__version__}",
        "manual_title": "tunneld manual",
        "description": "userspace IPsec (IKEv2 + ESP in UDP) site-to-site VPN daemon",
    }
    return str(Manpage(parser(), _data=data)).rstrip("\n") + "\n" + MAN_SEE_ALSO.lstrip("\n")


def completion(shell: str) -> str:
    import shtab

    p = parser()
    _mark_paths(p)
    return str(shtab.complete(p, shell=shell))


def generated() -> dict[Path, str]:
    files = {MAN_PAGE: man_page()}
    for shell, path in COMPLETIONS.items():
        files[path] = completion(shell)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.cli_docs", description=__doc__)
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    args = ap.parse_args(argv)
    stale = []
    for path, text in generated().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        verb = "stale" if args.check else "wrote"
        print(f"{verb}: {path.relative_to(ROOT)}")
    if stale and args.check:
        print("run `python -m tools.cli_docs` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
