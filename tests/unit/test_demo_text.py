"""What the demo (tools/demo.py) says about data plane drops: words, not a dict.

The demo itself runs in namespaces (``python -m tools.demo --keep-dir DIR``,
netns-scripts/demo.sh); this checks the text it prints for the drops.
"""

from __future__ import annotations

from tools.demo import explain_drops


def test_no_drops_need_no_note() -> None:
    assert explain_drops({}) is None
    assert explain_drops({"no_policy": 0, "replay": 0}) is None


def test_the_drop_after_start_is_called_expected() -> None:
    note = explain_drops({"no_policy": 1, "replay": 0})
    assert note is not None and note.startswith("(1 no_policy: expected right after start")
    assert "{" not in note


def test_other_drops_point_to_the_reasons() -> None:
    note = explain_drops({"auth_failed": 4, "no_policy": 1})
    assert note == "(4 auth_failed, 1 no_policy: see 'Drop reasons' in docs/operations.md)"
