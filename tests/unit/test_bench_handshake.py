"""The handshake benchmark's charon configuration (tools/bench_handshake.py), without
namespaces: what ``--charon-set`` writes into strongswan.conf and what it refuses
(the netns smoke test runs the benchmark for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.bench_handshake import conf_lines, parse_args, write_charon_dir


def test_dotted_keys_nest_into_sections() -> None:
    lines = conf_lines(
        {
            "ikesa_table_segments": "16",
            "plugins.kernel-netlink.roam_events": "no",
            "plugins.kernel-netlink.process_route": "no",
        }
    )
    assert lines == [
        "ikesa_table_segments = 16",
        "plugins {",
        "  kernel-netlink {",
        "    roam_events = no",
        "    process_route = no",
        "  }",
        "}",
    ]


def test_settings_and_log_level_reach_strongswan_conf(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    (pki / "ca").mkdir(parents=True)
    for name in ("ca/ca.pem", "s0.pem", "s0.key"):
        (pki / name).write_text("not a real certificate\n")
    write_charon_dir(tmp_path / "c", pki, 1, 1, {"threads": "24", "log_level": "-1"})
    conf = (tmp_path / "c" / "strongswan.conf").read_text()
    assert "\n  threads = 24\n" in conf
    assert "default = -1" in conf and "log_level" not in conf
    swanctl = (tmp_path / "c" / "swanctl" / "swanctl.conf").read_text()
    assert "mobike = no" in swanctl  # tunneld does no MOBIKE: no address lists in IKE_AUTH


@pytest.mark.parametrize("item", ["threads", "a b=1", "threads=1}", "x=1\ny"])
def test_charon_set_refuses_what_would_break_the_file(item: str) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--charon-set", item])


def test_charon_set_collects_keys() -> None:
    args = parse_args(["--charon-set", "threads=24", "--charon-set", "log_level=-1"])
    assert args.charon_set == {"threads": "24", "log_level": "-1"}
