"""The control protocol's request checks (tunneld/control.py rule 4), without a daemon:
the nesting scan runs before ``json.loads`` and must be linear whatever the line."""

from __future__ import annotations

import json
import time

import pytest

from tunneld.control import MAX_DEPTH, MAX_REQUEST, BadRequest, parse_request, too_deep


def nested(depth: int) -> bytes:
    return b'{"cmd": "status", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_the_depth_bound_counts_brackets_outside_strings_only() -> None:
    assert not too_deep(nested(MAX_DEPTH))
    assert too_deep(nested(MAX_DEPTH + 1))
    in_strings = b'{"cmd": "status", "x": "' + b"[{" * 1000 + b'"}'
    assert not too_deep(in_strings)
    assert json.loads(in_strings)["x"].startswith("[{")
    escaped_quote = b'{"x": "\\"' + b"[" * 100 + b'"}'  # the \" does not end the string
    assert not too_deep(escaped_quote)
    escaped_backslash = b'{"x": "\\\\", "y": ' + b"[" * 40 + b"]" * 40 + b"}"  # "\\" does
    assert too_deep(escaped_backslash)
    assert too_deep(b"]]]]" + b"[" * (MAX_DEPTH + 1))  # closers first do not buy depth


@pytest.mark.parametrize(
    "line",
    [
        b"[" * MAX_REQUEST,
        b'"' + b'\\"' * (MAX_REQUEST // 2 - 1),  # quadratic for a backtracking regex
        b'["' + b"[" * (MAX_REQUEST - 2),
        b'"\\' * (MAX_REQUEST // 2),
    ],
    ids=["brackets", "escaped-quotes", "unterminated-string", "backslashes"],
)
def test_the_scan_is_linear(line: bytes) -> None:
    start = time.process_time()
    for _ in range(5):
        with pytest.raises(BadRequest):
            parse_request(line)
    assert (time.process_time() - start) / 5 < 0.25


def test_a_well_formed_request_keeps_only_its_checked_fields() -> None:
    assert parse_request(b'{"cmd": "status", "extra": [1, {"a": null}]}') == {"cmd": "status"}
    assert parse_request(b'{"cmd": "down", "peer": "gw-b", "for": 30}') == {
        "cmd": "down", "peer": "gw-b", "for": 30.0,
    }  # fmt: skip
    assert parse_request(b'{"cmd": "down", "peer": "gw-b", "for": null}') == {
        "cmd": "down", "peer": "gw-b",
    }  # fmt: skip
    assert parse_request(b'{"cmd": "rekey", "peer": "gw-b"}') == {
        "cmd": "rekey", "peer": "gw-b", "ike": False,
    }  # fmt: skip


def test_another_servers_commands_reach_its_handler_whole() -> None:
    line = b'{"cmd": "stats", "detail": [1, 2]}'
    assert parse_request(line, ("stats",)) == {"cmd": "stats", "detail": [1, 2]}
    with pytest.raises(BadRequest, match="unknown command 'status' \\(known: stats\\)"):
        parse_request(b'{"cmd": "status"}', ("stats",))


def test_an_unknown_command_is_shown_cut_short() -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(b'{"cmd": "' + b"x" * 10_000 + b'"}')
    assert len(str(info.value)) < 200
