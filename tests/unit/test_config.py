"""The configuration file: valid files, defaults, credentials, `tunneld check`, the examples."""

from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ike.constants import IdType
from ike.identity import Identity
from tests.helpers.configfiles import (
    NOW,
    PSK_TEXT,
    REPO,
    base,
    load,
    make_confdir,
    make_pki,
    write,
    write_private,
)
from tunneld import pki
from tunneld.config import (
    DEFAULT_CHILD_BYTES,
    DEFAULT_CHILD_PACKETS,
    ConfigError,
    load_config,
)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def confdir(tmp_path: Path, pki_dir: Path) -> Path:
    return make_confdir(tmp_path, pki_dir)


# --- a valid file and its defaults ----------------------------------------------


def test_minimal_file_gets_documented_defaults(confdir: Path) -> None:
    config = load(confdir, base())
    g = config.gateway
    assert (g.name, g.tun, g.mtu, g.port, g.nat_t_port) == ("gw-a", "tunneld0", 1400, 500, 4500)
    assert [str(a) for a in g.listen] == ["0.0.0.0"]
    assert g.control_socket == Path("/run/tunneld/gw-a.sock")
    assert (g.log_format, g.log_level) == ("text", "info")
    p = config.peer("gw-b")
    assert p.auth == "pubkey" and p.psk is None and p.auto == "start" and p.port == 500
    assert [str(x) for x in p.ike] == ["aes256gcm16-prfsha256-x25519-ecp256"]
    assert [str(x) for x in p.esp] == ["aes256gcm16-noesn-esn", "aes128gcm16-noesn-esn"]
    assert (p.ike_lifetime, p.child_lifetime, p.rekey_jitter) == (14400, 3600, 0.1)
    assert (p.child_packet_limit, p.child_byte_limit) == (
        DEFAULT_CHILD_PACKETS,
        DEFAULT_CHILD_BYTES,
    )
    assert (
        p.children[0].child_packet_hard_limit < 1 << 28
    )  # AES-GCM keys retired well before 2**28 packets
    assert (p.dpd_delay, p.dpd_action, p.delete_delay) == (30, "restart", 5)
    assert p.auth_failure_backoff == 30  # seconds, doubling after each failure in a row
    assert (p.replay_window, p.save_keys) == (1024, False)
    assert p.ike_hard_lifetime == pytest.approx(14400 * 1.1)
    assert p.id == Identity(IdType.ID_FQDN, b"gw-b.example.org")
    assert p.local_id == config.identity.id == Identity(IdType.ID_FQDN, b"gw-a.example.org")
    assert (
        config.identity.private_key is not None and config.identity.private_key.kind == "ecdsa-p256"
    )
    assert config.identity.ca[0].subject.rfc4514_string() == "CN=test CA"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("ike_lifetime", 90, 90.0),
        ("ike_lifetime", "90s", 90.0),
        ("ike_lifetime", "5m", 300.0),
        ("ike_lifetime", "4h", 14400.0),
        ("ike_lifetime", "1d", 86400.0),
        ("child_lifetime", "1.5h", 5400.0),
        ("dpd_delay", 0, 0.0),
        ("delete_delay", "0s", 0.0),
        ("child_byte_limit", "64GiB", 64 << 30),
        ("child_byte_limit", "500MB", 500_000_000),
        ("child_byte_limit", 1 << 30, 1 << 30),
        ("rekey_jitter", 0, 0.0),
        ("auto", "listen", "listen"),
        ("port", 4500, 4500),
    ],
)
def test_peer_values(confdir: Path, key: str, value: object, expected: object) -> None:
    data = base()
    data["peer"][0][key] = value
    assert getattr(load(confdir, data).peers[0], key) == expected


def test_relative_paths_resolve_against_the_config_directory(
    confdir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(confdir, base())
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config = load_config(path, now=NOW)
    assert config.identity.private_key is not None
    assert config.identity.private_key.path == confdir / "pki" / "gw-a.key"
    data = base()
    data["gateway"]["control_socket"] = "run/gw.sock"
    assert load(confdir, data).gateway.control_socket == confdir / "run" / "gw.sock"


def test_listen_only_peer(confdir: Path) -> None:
    data = base()
    del data["peer"][0]["address"]
    peer = load(confdir, data).peers[0]
    assert peer.address is None and peer.auto == "listen"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gw-b.example.org", "gw-b.example.org"),
        ("GW-B.Example.ORG.", "gw-b.example.org"),
        ("localhost", "localhost"),
        ("192.0.2.2", ipaddress.ip_address("192.0.2.2")),
    ],
)
def test_peer_address_may_be_a_dns_name_never_resolved_by_check(
    confdir: Path, text: str, expected: object
) -> None:
    data = base()
    data["peer"][0]["address"] = text
    peer = load(confdir, data).peers[0]
    assert peer.address == expected and peer.auto == "start"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"  {PSK_TEXT}\n".encode(), PSK_TEXT.encode()),
        (b"0x" + bytes(range(32)).hex().encode() + b"\n", bytes(range(32))),
        (b"0sAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", bytes(range(32))),
    ],
    ids=["text", "hex", "base64"],
)
def test_psk_peer(confdir: Path, content: bytes, expected: bytes) -> None:
    write_private(confdir / "psk" / "gw-b.psk", content)
    data = base()
    del data["identity"]
    data["identity"] = {"id": "192.0.2.1"}
    data["peer"][0].update(id="192.0.2.2", psk_file="psk/gw-b.psk")
    config = load(confdir, data)
    peer = config.peers[0]
    assert peer.auth == "psk"  # the default when psk_file is set
    assert peer.psk is not None and peer.psk.reveal() == expected
    assert peer.id == Identity(IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 2]))
    assert config.identity.certificate is None
    # Secrets never reach a repr.
    text = repr(config) + str(peer.psk)
    assert expected.hex() not in text and repr(expected) not in text and "horse" not in text


def test_private_key_is_redacted_everywhere(confdir: Path) -> None:
    config = load(confdir, base())
    key = config.identity.private_key
    assert key is not None
    pem = key.reveal().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    body = b"".join(pem.splitlines()[1:-1]).decode()
    assert body not in repr(config) and body[:16] not in repr(key)
    assert "redacted" in repr(key)


def test_dn_identity_is_sent_as_the_certificate_subject(confdir: Path) -> None:
    data = base()
    data["identity"]["id"] = "CN = gw-a"
    identity = load(confdir, data).identity
    assert identity.certificate is not None
    assert identity.id.id_type == IdType.ID_DER_ASN1_DN
    assert identity.id.data == identity.certificate.subject.public_bytes()


def test_local_id_override(confdir: Path) -> None:
    data = base()
    data["peer"][0]["local_id"] = "192.0.2.1"
    assert str(load(confdir, data).peers[0].local_id) == "192.0.2.1"


# --- one error per key: file, key path and reason -----------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
        load_config(tmp_path / "nope.toml")


# --- the shipped examples ---------------------------------------------------------


def test_conf_examples_load(tmp_path: Path) -> None:
    """conf/*.toml with the certificates and PSK their comments tell you to create."""
    for example in ("gw-a.toml", "gw-b.toml", "psk-example.toml", "two-children.toml"):
        shutil.copy(REPO / "conf" / example, tmp_path / example)
    pki.init_ca(tmp_path / "pki", "tunneld lab CA")
    pki.issue(tmp_path / "pki", "gw-a", dns=["gw-a.example.org"], ips=["192.0.2.1"])
    pki.issue(tmp_path / "pki", "gw-b", dns=["gw-b.example.org"], ips=["192.0.2.2"])
    (tmp_path / "psk").mkdir()
    write_private(tmp_path / "psk" / "gw-b.psk", b"0x" + os.urandom(32).hex().encode())

    a = load_config(tmp_path / "gw-a.toml")
    b = load_config(tmp_path / "gw-b.toml")
    psk = load_config(tmp_path / "psk-example.toml")
    assert (a.peers[0].address, b.peers[0].address) == (b.gateway.listen[0], a.gateway.listen[0])
    assert a.peers[0].local_subnets == b.peers[0].remote_subnets
    assert a.peers[0].remote_subnets == b.peers[0].local_subnets
    assert [str(n) for n in a.peers[0].local_subnets] == ["198.51.100.0/24"]
    assert a.peers[0].id.matches(b.identity.id) and b.peers[0].id.matches(a.identity.id)
    assert (a.peers[0].auto, b.peers[0].auto) == ("start", "listen")
    assert (
        psk.peers[0].auth == "psk" and psk.peers[0].psk is not None and len(psk.peers[0].psk) == 32
    )
    (two,) = load_config(tmp_path / "two-children.toml").peers
    assert [c.name for c in two.children] == ["low", "high"]
    assert [c.child_lifetime for c in two.children] == [3600.0, 1200.0]


def test_conf_hub_examples_load(tmp_path: Path) -> None:
    """conf/hub.toml and conf/spoke1.toml, with the certificates their comments name."""
    for example in ("hub.toml", "spoke1.toml"):
        shutil.copy(REPO / "conf" / example, tmp_path / example)
    pki.init_ca(tmp_path / "pki", "tunneld lab CA")
    pki.issue(tmp_path / "pki", "hub", dns=["hub.example.org"], ips=["192.0.2.1"])
    pki.issue(tmp_path / "pki", "s1", dns=["s1.branch.example.org"])
    hub = load_config(tmp_path / "hub.toml")
    spoke = load_config(tmp_path / "spoke1.toml")
    branches = hub.peer("branches")
    assert branches.is_pattern and branches.max_spokes == 50
    (row,) = branches.spokes
    assert row.id.matches(spoke.identity.id)
    assert list(row.subnets) == list(spoke.peers[0].local_subnets)
    assert spoke.peers[0].id.matches(hub.identity.id)
