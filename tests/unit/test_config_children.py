"""[[peer.child]]: named Child SAs, their defaults, and what the loader refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.configfiles import NOW, base, make_confdir, make_pki, to_toml
from tunneld.config import ConfigError, describe, load_config


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def confdir(tmp_path: Path, pki_dir: Path) -> Path:
    return make_confdir(tmp_path, pki_dir)


LOW = '[[peer.child]]\nname = "low"\nlocal_subnets = ["198.51.100.0/25"]\nremote_subnets = ["203.0.113.0/25"]\n'  # noqa: E501
HIGH = '[[peer.child]]\nname = "high"\nlocal_subnets = ["198.51.100.128/25"]\nremote_subnets = ["203.0.113.128/25"]\n'  # noqa: E501


def write_with_children(confdir: Path, peer_extra: str, children: str) -> Path:
    """The base configuration without top-level selectors, plus ``children`` tables."""
    data = base()
    del data["peer"][0]["local_subnets"], data["peer"][0]["remote_subnets"]
    path = confdir / "gw.toml"
    path.write_text(to_toml(data) + peer_extra + children)
    return path


def test_two_children_with_own_lifetimes_and_inherited_defaults(confdir: Path) -> None:
    high = HIGH + 'esp = ["chacha20poly1305"]\nchild_lifetime = "20m"\nchild_packet_limit = 5000\n'
    path = write_with_children(
        confdir, 'child_lifetime = "30m"\nesp = ["aes128gcm16"]\n', LOW + high
    )
    config = load_config(path, now=NOW)
    (peer,) = config.peers
    low, hi = peer.children
    assert (low.name, hi.name) == ("low", "high") and not low.implicit
    assert [str(n) for n in low.remote_subnets] == ["203.0.113.0/25"]
    assert (low.child_lifetime, hi.child_lifetime) == (1800.0, 1200.0)  # peer's value inherited
    assert [str(p) for p in low.esp] == ["aes128gcm16-noesn"]
    assert [str(p) for p in hi.esp] == ["chacha20poly1305-noesn"]
    assert (hi.child_packet_limit, hi.child_packet_hard_limit) == (5000, 5500)
    assert [str(n) for n in peer.remote_subnets] == ["203.0.113.0/25", "203.0.113.128/25"]
    text = describe(config)
    assert "  child low: 198.51.100.0/25 <=> 203.0.113.0/25" in text
    assert "  child high: 198.51.100.128/25 <=> 203.0.113.128/25" in text


def test_a_peer_without_children_has_one_implicit_child_named_after_it(confdir: Path) -> None:
    path = confdir / "gw.toml"
    path.write_text(to_toml(base()))
    (peer,) = load_config(path, now=NOW).peers
    (child,) = peer.children
    assert (child.name, child.implicit) == ("gw-b", True)
    assert child.local_subnets == peer.local_subnets and child.esp == peer.esp


@pytest.mark.parametrize(
    ("peer_extra", "children", "key", "fragment"),
    [
        (
            'local_subnets = ["198.51.100.0/24"]\n',
            LOW,
            "peer[0].local_subnets",
            "not with [[peer.child]]: each child has its own local_subnets and remote_subnets",
        ),
        ("", LOW + LOW.replace("/25", "/26"), "peer[0].child[1].name", "'low' is also child[0]"),
        (
            "",
            LOW + HIGH.replace("203.0.113.128/25", "203.0.113.64/26"),
            "peer[0].child[1].remote_subnets[0]",
            "203.0.113.64/26 overlaps 203.0.113.0/25 of child 'low'",
        ),
        (
            "",
            LOW + HIGH.replace("203.0.113.128/25", "198.51.100.0/26"),
            "peer[0].child[1].remote_subnets[0]",
            "overlaps local subnet 198.51.100.0/25",
        ),
        ("", LOW.replace('name = "low"\n', ""), "peer[0].child[0].name", "required key"),
        ("", LOW + "lifetime = 5\n", "peer[0].child[0].lifetime", "unknown key"),
        ("", LOW + 'child_lifetime = "1s"\n', "peer[0].child[0].child_lifetime", "out of range"),
        ("", LOW + 'esp = ["aes999"]\n', "peer[0].child[0].esp[0]", ""),
        ("child = 3\n", "", "peer[0].child", "[[peer.child]] tables"),
    ],
    ids=[
        "mixed-selectors", "duplicate-name", "overlapping-remote", "remote-is-local",
        "missing-name", "unknown-key", "lifetime-range", "bad-esp", "not-a-table",
    ],
)  # fmt: skip
def test_child_errors_name_file_key_and_reason(
    confdir: Path, peer_extra: str, children: str, key: str, fragment: str
) -> None:
    path = write_with_children(confdir, peer_extra, children)
    with pytest.raises(ConfigError) as info:
        load_config(path, now=NOW)
    assert (info.value.file, info.value.key) == (path, key), str(info.value)
    assert fragment in info.value.reason, str(info.value)
