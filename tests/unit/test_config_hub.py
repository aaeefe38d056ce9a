"""Dynamic peers in the configuration (issue 10): identity patterns, the spokes table,
and ``tunneld check`` refusing entries a responder could not tell apart
(tunneld/peermatch.py). Each refusal names the file, the key and the reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.configfiles import NOW, base, load, make_confdir, make_pki, write
from tests.helpers.hubs import write_hub_configs
from tunneld.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
Change = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def confdir(tmp_path: Path, pki_dir: Path) -> Path:
    return make_confdir(tmp_path, pki_dir)


def listen_only(name: str, ident: str, subnet: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "id": ident,
        "auto": "listen",
        "local_subnets": ["198.51.100.0/24"],
        "remote_subnets": [subnet],
        **more,
    }


def peers(*entries: dict[str, Any]) -> Change:
    def apply(data: dict[str, Any]) -> None:
        data["peer"] = list(entries)

    return apply


HUB = listen_only("branches", "*.branch.example.org", "203.0.113.0/24")

REFUSED: list[tuple[str, Change, str, str]] = [
    (
        "two-patterns-overlap",
        peers(HUB, listen_only("deep", "*.east.branch.example.org", "10.1.0.0/16")),
        "peer[1].id",
        "'*.east.branch.example.org' and peer 'branches' ('*.branch.example.org') match the "
        "same identities from any address",
    ),
    (
        "exact-inside-pattern",
        peers(HUB, listen_only("s1", "s1.branch.example.org", "10.1.0.0/16")),
        "peer[1].id",
        "match the same identities from any address",
    ),
    (
        "pattern-and-exact-same-address",
        peers(
            listen_only("s1", "s1.branch.example.org", "10.1.0.0/16", address="192.0.2.7"),
            {**HUB, "address": "192.0.2.7"},
        ),
        "peer[1].id",
        "from the same address 192.0.2.7",
    ),
    (
        "pattern-behind-an-addressed-exact",
        peers(listen_only("s1", "s1.branch.example.org", "10.1.0.0/16", address="192.0.2.7"), HUB),
        "peer[1].id",
        "from address 192.0.2.7",
    ),
    (
        "pattern-and-a-dns-name",
        peers(
            listen_only("s1", "s1.branch.example.org", "10.1.0.0/16", address="s1.example.net"),
            {**HUB, "address": "192.0.2.8"},
        ),
        "peer[1].id",
        "s1.example.net (a DNS name may resolve to either)",
    ),
    (
        "pattern-with-a-dns-name",
        peers({**HUB, "address": "hub-peer.example.net"}),
        "peer[0].address",
        "an identity pattern takes an IP address (or none), not a name",
    ),
    (
        "duplicate-address-same-id",
        peers(
            listen_only("a", "gw-b.example.org", "10.1.0.0/16", address="192.0.2.7"),
            listen_only("b", "gw-b.example.org", "10.2.0.0/16", address="192.0.2.7"),
        ),
        "peer[1].id",
        "'gw-b.example.org' is also peer 'a'",
    ),
    (
        "email-patterns",
        peers(
            listen_only("ops", "*@example.org", "10.1.0.0/16"),
            listen_only("alice", "alice@example.org", "10.2.0.0/16"),
        ),
        "peer[1].id",
        "match the same identities",
    ),
    (
        "pattern-with-psk",
        peers({**HUB, "auth": "psk", "psk_file": "psk/gw-b.psk"}),
        "peer[0].auth",
        "an identity pattern ('*.branch.example.org') needs certificates: with one shared PSK",
    ),
    (
        "pattern-auto-start",
        peers({**HUB, "address": "192.0.2.7", "auto": "start"}),
        "peer[0].auto",
        "names no one peer to initiate to",
    ),
    (
        "pattern-with-children",
        peers(
            {
                **{k: v for k, v in HUB.items() if not k.endswith("_subnets")},
                "child": [
                    {
                        "name": "low",
                        "local_subnets": ["198.51.100.0/25"],
                        "remote_subnets": ["203.0.113.0/25"],
                    }
                ],
            }
        ),
        "peer[0].child",
        "[[peer.child]] tables are not supported with a pattern",
    ),
    (
        "max-spokes-without-pattern",
        peers(listen_only("s1", "s1.branch.example.org", "10.1.0.0/16", max_spokes=3)),
        "peer[0].max_spokes",
        "only used with an identity pattern",
    ),
    (
        "max-spokes-range",
        peers({**HUB, "max_spokes": 0}),
        "peer[0].max_spokes",
        "0 is out of range (1 .. 10000)",
    ),
    (
        "spokes-row-outside-pattern",
        peers({**HUB, "spokes": {"gw-x.example.org": ["203.0.113.16/28"]}}),
        "peer[0].spokes.gw-x.example.org",
        "is not an identity the pattern '*.branch.example.org' matches",
    ),
    (
        "spokes-row-outside-pool",
        peers({**HUB, "spokes": {"s1.branch.example.org": ["10.0.0.0/28"]}}),
        "peer[0].spokes.s1.branch.example.org[0]",
        "10.0.0.0/28 is not inside remote_subnets",
    ),
    (
        "spokes-rows-overlap",
        peers(
            {
                **HUB,
                "spokes": {
                    "s1.branch.example.org": ["203.0.113.16/28"],
                    "s2.branch.example.org": ["203.0.113.0/27"],
                },
            }
        ),
        "peer[0].spokes.s2.branch.example.org[0]",
        "203.0.113.0/27 overlaps 203.0.113.16/28 of spoke 's1.branch.example.org'",
    ),
]


@pytest.mark.parametrize(
    ("change", "key", "fragment"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_refused_with_file_key_and_reason(
    confdir: Path, change: Change, key: str, fragment: str
) -> None:
    data = base()
    change(data)
    path = write(confdir, data)
    with pytest.raises(ConfigError) as info:
        load_config(path, now=NOW)
    assert (info.value.file, info.value.key) == (path, key), str(info.value)
    assert fragment in info.value.reason, str(info.value)


ACCEPTED: list[tuple[str, Change]] = [
    (
        "three-address-less-entries",
        peers(
            listen_only("s1", "s1.branch.example.org", "203.0.113.16/28"),
            listen_only("s2", "s2.branch.example.org", "203.0.113.32/28"),
            listen_only("s3", "s3.branch.example.org", "203.0.113.48/28"),
        ),
    ),
    (
        "same-address-distinct-ids",
        peers(
            listen_only("a", "a.example.org", "10.1.0.0/16", address="192.0.2.7"),
            listen_only("b", "b.example.org", "10.2.0.0/16", address="192.0.2.7"),
        ),
    ),
    (
        "pattern-and-exact-at-different-addresses",
        peers(
            listen_only("s1", "s1.branch.example.org", "10.1.0.0/16", address="192.0.2.7"),
            {**HUB, "address": "192.0.2.8"},
        ),
    ),
    ("disjoint-patterns", peers(HUB, listen_only("x", "*.other.example.org", "10.1.0.0/16"))),
]


@pytest.mark.parametrize("change", [a[1] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_accepted(confdir: Path, change: Change) -> None:
    data = base()
    change(data)
    load(confdir, data)


def test_pattern_entry_reads_its_spokes_table(confdir: Path) -> None:
    data = base()
    rows = {
        "s1.branch.example.org": ["203.0.113.16/28"],
        "S2.Branch.example.org": ["203.0.113.32/28"],
    }
    peers({**HUB, "max_spokes": 5, "spokes": rows})(data)
    (entry,) = load(confdir, data).peers
    assert entry.is_pattern and entry.max_spokes == 5
    assert [(str(r.id), [str(n) for n in r.subnets]) for r in entry.spokes] == [
        ("s1.branch.example.org", ["203.0.113.16/28"]),
        ("S2.Branch.example.org", ["203.0.113.32/28"]),
    ]


def test_default_spoke_bound(confdir: Path) -> None:
    data = base()
    peers(HUB)(data)
    (entry,) = load(confdir, data).peers
    assert entry.max_spokes == 64 and entry.spokes == ()


@pytest.mark.parametrize("shape", ["entries", "pattern"])
def test_the_test_hubs_pass_check(tmp_path: Path, shape: str) -> None:
    files = write_hub_configs(tmp_path, shape, table=shape == "pattern")
    for path in (files.hub, *files.spokes):
        load_config(path)
