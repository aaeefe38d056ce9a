"""tunneld.reload: the plan a reload makes from two configurations (pure: real files,
real credentials, no daemon)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tools.lab import SiteOptions, write_site_configs
from tunneld import pki
from tunneld.config import Config, PeerConfig, load_config
from tunneld.reload import (
    LIVE_KEYS,
    REAUTH_KEYS,
    RESTART_KEYS,
    ReloadPlan,
    key_kind,
    plan_reload,
)
from tunneld.tomlschema import ConfigError

SECOND_PEER = """
[[peer]]
name = "gw-c"
address = "192.0.2.3"
id = "gw-c.example.org"
local_subnets = ["198.51.100.0/24"]
remote_subnets = ["203.0.113.128/25"]
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    conf_a, _ = write_site_configs(tmp_path, "rl", SiteOptions(esp=("aes256gcm16", "aes128gcm16")))
    # gw-b's remote site is 203.0.113.0/24: make room for gw-c in the upper half
    text = conf_a.read_text().replace('"203.0.113.0/24"', '"203.0.113.0/25"')
    conf_a.write_text(text)
    return conf_a


def reloaded(path: Path, old_text: str, new_text: str) -> tuple[Config, Config]:
    path.write_text(old_text)
    old = load_config(path)
    path.write_text(new_text)
    return old, load_config(path)


def plan(path: Path, edit: str, replacement: str, *, append: str = "") -> ReloadPlan:
    text = path.read_text()
    assert edit in text, edit
    try:
        old, new = reloaded(path, text, text.replace(edit, replacement) + append)
    finally:
        path.write_text(text)
    return plan_reload(old, new)


def kinds(result: ReloadPlan) -> dict[str, str]:
    return {p.name: p.kind for p in result.peers}


def test_every_peer_key_is_classified() -> None:
    """Rule 4: a key added to [[peer]] must say whether it is live, reauthenticates or
    restarts (unclassified keys restart the peer, which is safe but rarely needed)."""
    classified = LIVE_KEYS | REAUTH_KEYS | RESTART_KEYS | {"name"}
    fields = {f.name for f in dataclasses.fields(PeerConfig)}
    assert fields - classified == set(), "classify these keys in tunneld/reload.py"
    assert not (LIVE_KEYS & REAUTH_KEYS or LIVE_KEYS & RESTART_KEYS or REAUTH_KEYS & RESTART_KEYS)


def test_an_identical_file_changes_nothing(conf: Path) -> None:
    result = plan(conf, "", "")
    assert kinds(result) == {"gw-b": "unchanged"} and result.changes_nothing
    assert result.summary()["keys"] == {}


def test_lifetimes_and_limits_are_updated_in_place(conf: Path) -> None:
    result = plan(conf, "[[peer]]\n", '[[peer]]\nchild_lifetime = "10m"\nike_lifetime = "1h"\n')
    (change,) = result.peers
    assert change.kind == "updated" and set(change.keys) == {"child_lifetime", "ike_lifetime"}
    # the implicit child's copy of the lifetime is not listed twice
    assert not any(k.startswith("child[") for k in change.keys)


def test_proposals_identity_and_address_reauthenticate(conf: Path) -> None:
    assert kinds(plan(conf, '"aes256gcm16", "aes128gcm16"', '"aes128gcm16"')) == {
        "gw-b": "reauthenticated"
    }
    assert kinds(plan(conf, 'address = "192.0.2.2"', 'address = "192.0.2.22"')) == {
        "gw-b": "reauthenticated"
    }
    # a lifetime next to a proposal: the more disruptive kind wins, both keys listed
    result = plan(conf, '"aes256gcm16", "aes128gcm16"]', '"aes128gcm16"]\nchild_lifetime = "10m"')
    (change,) = result.peers
    assert change.kind == "reauthenticated" and set(change.keys) == {"esp", "child_lifetime"}


def test_other_subnets_restart_the_peer(conf: Path) -> None:
    result = plan(conf, '"203.0.113.0/25"', '"203.0.113.0/26"')
    (change,) = result.peers
    assert change.kind == "restarted" and "remote_subnets" in change.keys


def test_added_and_removed_peers(conf: Path) -> None:
    text = conf.read_text()
    old, new = reloaded(conf, text, text + SECOND_PEER)
    assert kinds(plan_reload(old, new)) == {"gw-b": "unchanged", "gw-c": "added"}
    assert kinds(plan_reload(new, old)) == {"gw-b": "unchanged", "gw-c": "removed"}
    summary = plan_reload(new, old).summary()
    assert summary["removed"] == ["gw-c"] and summary["unchanged"] == ["gw-b"]


def test_a_renewed_certificate_is_a_credentials_update(conf: Path) -> None:
    """Same identity, new key pair and certificate from the same CA: next authentication."""
    old = load_config(conf)
    pki_dir = conf.parent / "pki"
    pki.issue(
        pki_dir / "ca", "gw-a", pki_dir, dns=["gw-a.example.org"], ips=["192.0.2.1"], force=True
    )
    new = load_config(conf)
    assert new.identity.certificate != old.identity.certificate
    (change,) = plan_reload(old, new).peers
    assert change.kind == "updated" and change.keys == ("credentials",)


def test_a_changed_gateway_key_is_refused_naming_it(conf: Path) -> None:
    text = conf.read_text()
    old, new = reloaded(conf, text, text.replace("mtu = 1400", "mtu = 1300"))
    with pytest.raises(ConfigError) as info:
        plan_reload(old, new)
    assert info.value.key == "gateway.mtu" and "cannot change while tunneld runs" in str(info.value)
    assert str(conf) in str(info.value)


def test_a_changed_metrics_endpoint_is_refused(conf: Path) -> None:
    text = conf.read_text()
    on = '\n[metrics]\nlisten = "127.0.0.1:9108"\n'
    old, new = reloaded(conf, text, text + on)
    with pytest.raises(ConfigError) as info:
        plan_reload(old, new)
    assert info.value.key == "metrics"
    old, new = reloaded(conf, text + on, text + on.replace("9108", "9109"))
    with pytest.raises(ConfigError) as info:
        plan_reload(old, new)
    assert info.value.key == "metrics.listen"


def test_every_table_is_handled() -> None:
    """A new top-level table must be looked at by plan_reload (rules 2-5)."""
    assert {f.name for f in dataclasses.fields(Config)} == {
        "path",
        "gateway",
        "identity",
        "peers",
        "metrics",
    }


def test_key_kinds() -> None:
    assert key_kind("child[web].esp") == "reauthenticated"
    assert key_kind("child[web].child_lifetime") == "updated"
    assert key_kind("children") == "restarted"
    assert key_kind("some_future_key") == "restarted"
