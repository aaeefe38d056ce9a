"""The configuration file: every key's validation names the file, the key path and the reason."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448

from tests.helpers.configfiles import (
    NOW,
    base,
    load,
    make_confdir,
    make_pki,
    write,
    write_private,
)
from tunneld.config import (
    ConfigError,
    load_config,
)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def confdir(tmp_path: Path, pki_dir: Path) -> Path:
    return make_confdir(tmp_path, pki_dir)


Mutator = Callable[[dict[str, Any]], None]


def setter(section: str, key: str, value: object) -> Mutator:
    def apply(data: dict[str, Any]) -> None:
        target = data["peer"][0] if section == "peer" else data[section]
        target[key] = value

    return apply


def deleter(section: str, key: str) -> Mutator:
    def apply(data: dict[str, Any]) -> None:
        target = data["peer"][0] if section == "peer" else data[section]
        del target[key]

    return apply


def second_peer(**changes: object) -> Mutator:
    def apply(data: dict[str, Any]) -> None:
        other = copy.deepcopy(data["peer"][0])
        other.update(
            name="gw-c", address="192.0.2.3", id="gw-c.example.org", remote_subnets=["10.9.0.0/16"]
        )
        other.update(changes)
        data["peer"].append(other)

    return apply


ERRORS: list[tuple[str, Mutator, str, str]] = [
    # (case id, change, key path, reason fragment)
    ("gw-missing-name", deleter("gateway", "name"), "gateway.name", "required key is missing"),
    (
        "gw-data-thread-type",
        setter("gateway", "data_thread", "yes"),
        "gateway.data_thread",
        "expected a boolean (true/false), got string",
    ),
    (
        "gw-busy-poll-without-data-thread",
        setter("gateway", "busy_poll_us", 500),
        "gateway.busy_poll_us",
        "needs data_thread = true",
    ),
    (
        "gw-busy-poll-range",
        setter("gateway", "busy_poll_us", 100_001),
        "gateway.busy_poll_us",
        "100001 is out of range (0 .. 100000)",
    ),
    ("gw-name", setter("gateway", "name", "gw a!"), "gateway.name", "must be 1-64 of"),
    (
        "gw-name-type",
        setter("gateway", "name", 7),
        "gateway.name",
        "expected a string, got integer",
    ),
    (
        "gw-listen",
        setter("gateway", "listen", ["192.0.2.1", "192.0.2.300"]),
        "gateway.listen[1]",
        "'192.0.2.300' is not an IPv4/IPv6 address",
    ),
    (
        "gw-listen-twice",
        setter("gateway", "listen", ["192.0.2.1", "192.0.2.3", "192.0.2.1"]),
        "gateway.listen[2]",
        "'192.0.2.1' is listed twice",
    ),
    (
        "gw-listen-any-and-more",
        setter("gateway", "listen", ["192.0.2.1", "0.0.0.0"]),
        "gateway.listen[1]",
        "'0.0.0.0' (every address) cannot be combined with other IPv4 addresses",
    ),
    (
        "gw-listen-type",
        setter("gateway", "listen", 5),
        "gateway.listen",
        "expected an array of strings, got integer",
    ),
    ("gw-listen-empty", setter("gateway", "listen", []), "gateway.listen", "must not be empty"),
    ("gw-port", setter("gateway", "port", 0), "gateway.port", "0 is out of range (1 .. 65535)"),
    ("gw-natt", setter("gateway", "nat_t_port", 70000), "gateway.nat_t_port", "out of range"),
    (
        "gw-tun",
        setter("gateway", "tun", "a-very-long-ifname"),
        "gateway.tun",
        "not a valid interface name",
    ),
    ("gw-mtu", setter("gateway", "mtu", 100), "gateway.mtu", "100 is out of range (576 .. 9000)"),
    (
        "gw-mtu-str",
        setter("gateway", "mtu", "1400"),
        "gateway.mtu",
        "expected an integer, got string",
    ),
    (
        "gw-mtu-bool",
        setter("gateway", "mtu", True),
        "gateway.mtu",
        "expected an integer, got boolean",
    ),
    (
        "gw-mtu-ipv6",
        lambda d: (
            setter("gateway", "mtu", 1000)(d),
            setter("peer", "remote_subnets", ["2001:db8::/64"])(d),
        ),
        "gateway.mtu",
        "1000 < 1280",
    ),
    (
        "gw-log",
        setter("gateway", "log_format", "xml"),
        "gateway.log_format",
        "'xml' is not one of: text, json",
    ),
    (
        "gw-level",
        setter("gateway", "log_level", "loud"),
        "gateway.log_level",
        "'loud' is not one of",
    ),
    (
        "gw-typo",
        setter("gateway", "lsiten", ["192.0.2.1"]),
        "gateway.lsiten",
        "unknown key; did you mean 'listen'?",
    ),
    ("id-missing", deleter("identity", "id"), "identity.id", "required key is missing"),
    (
        "id-bad",
        setter("identity", "id", "two words"),
        "identity.id",
        "invalid identity 'two words'",
    ),
    (
        "id-type",
        setter("identity", "id", 1),
        "identity.id",
        "expected an identity string, got integer",
    ),
    (
        "id-not-in-cert",
        setter("identity", "id", "gw-x.example.org"),
        "identity.id",
        "'gw-x.example.org' is not in the certificate "
        "(subject CN=gw-a, DNS:gw-a.example.org, IP:192.0.2.1)",
    ),
    (
        "id-cert-without-key",
        deleter("identity", "private_key"),
        "identity.private_key",
        "required with identity.certificate",
    ),
    (
        "id-cert-missing",
        setter("identity", "certificate", "pki/nope.pem"),
        "identity.certificate",
        "cannot read certificate file",
    ),
    (
        "id-cert-not-pem",
        setter("identity", "certificate", "psk/gw-b.psk"),
        "identity.certificate",
        "holds no PEM certificate",
    ),
    (
        "id-key-mismatch",
        setter("identity", "private_key", "pki/other.key"),
        "identity.certificate",
        "private key",
    ),
    (
        "id-key-not-pem",
        setter("identity", "private_key", "psk/gw-b.psk"),
        "identity.private_key",
        "no PEM private key",
    ),
    (
        "id-ca-not-ca",
        setter("identity", "ca", ["pki/other.pem"]),
        "identity.ca[0]",
        "CN=other is not a CA certificate",
    ),
    (
        "id-ca-wrong",
        setter("identity", "ca", ["pki/ca2/ca.pem"]),
        "identity.certificate",
        "no trusted CA issued 'CN=gw-a'",
    ),
    ("id-ca-empty", setter("identity", "ca", []), "identity.ca", "must not be empty"),
    (
        "id-typo",
        setter("identity", "certificat", "x"),
        "identity.certificat",
        "did you mean 'certificate'?",
    ),
    ("peer-missing-name", deleter("peer", "name"), "peer[0].name", "required key is missing"),
    (
        "peer-address",
        setter("peer", "address", "gw_b.example.org"),
        "peer[0].address",
        "'gw_b.example.org' is neither an IPv4/IPv6 address nor a DNS name",
    ),
    (
        "peer-address-type",
        setter("peer", "address", 1),
        "peer[0].address",
        "expected a string, got integer",
    ),
    (
        "peer-start-needs-address",
        lambda d: (deleter("peer", "address")(d), setter("peer", "auto", "start")(d)),
        "peer[0].address",
        'required with auto = "start"',
    ),
    ("peer-port", setter("peer", "port", 65536), "peer[0].port", "65536 is out of range"),
    ("peer-id-missing", deleter("peer", "id"), "peer[0].id", "required key is missing"),
    ("peer-id", setter("peer", "id", "C=CH, XX=y"), "peer[0].id", "unknown DN attribute 'XX'"),
    (
        "peer-local-id",
        setter("peer", "local_id", "gw-z.example.org"),
        "peer[0].local_id",
        "is not in the certificate",
    ),
    (
        "peer-auth",
        setter("peer", "auth", "cert"),
        "peer[0].auth",
        "'cert' is not one of: pubkey, psk",
    ),
    (
        "peer-psk-with-pubkey",
        lambda d: (
            setter("peer", "auth", "pubkey")(d),
            setter("peer", "psk_file", "psk/gw-b.psk")(d),
        ),
        "peer[0].psk_file",
        'only used with auth = "psk"',
    ),
    (
        "peer-psk-missing",
        setter("peer", "auth", "psk"),
        "peer[0].psk_file",
        'required with auth = "psk"',
    ),
    (
        "peer-psk-file-missing",
        setter("peer", "psk_file", "psk/none.psk"),
        "peer[0].psk_file",
        "cannot read PSK file",
    ),
    (
        "peer-psk-inline",
        setter("peer", "psk", "secret"),
        "peer[0].psk",
        "unknown key; did you mean 'psk_file'?",
    ),
    (
        "peer-local-subnets-missing",
        deleter("peer", "local_subnets"),
        "peer[0].local_subnets",
        "required key is missing",
    ),
    (
        "peer-local-subnets-empty",
        setter("peer", "local_subnets", []),
        "peer[0].local_subnets",
        "must not be empty",
    ),
    (
        "peer-host-bits",
        setter("peer", "remote_subnets", ["203.0.113.0/24", "203.0.113.1/24"]),
        "peer[0].remote_subnets[1]",
        "'203.0.113.1/24' has host bits set (did you mean '203.0.113.0/24'?)",
    ),
    (
        "peer-subnet-garbage",
        setter("peer", "remote_subnets", ["garbage"]),
        "peer[0].remote_subnets[0]",
        "'garbage' is not an IPv4/IPv6 network in CIDR notation",
    ),
    (
        "peer-subnet-type",
        setter("peer", "remote_subnets", [24]),
        "peer[0].remote_subnets[0]",
        "expected a string, got integer",
    ),
    (
        "peer-overlap-local",
        setter("peer", "remote_subnets", ["198.51.100.128/25"]),
        "peer[0].remote_subnets[0]",
        "198.51.100.128/25 overlaps local subnet 198.51.100.0/24",
    ),
    (
        "peer-auto",
        setter("peer", "auto", "always"),
        "peer[0].auto",
        "'always' is not one of: start, listen",
    ),
    (
        "peer-ike",
        setter("peer", "ike", ["aes256gcm16-prfsha256-modp2048"]),
        "peer[0].ike[0]",
        "'modp2048': MODP groups",
    ),
    ("peer-ike-empty", setter("peer", "ike", []), "peer[0].ike", "must not be empty"),
    (
        "peer-esp",
        setter("peer", "esp", ["aes256gcm16", "aes256gcm16-prfsha256"]),
        "peer[0].esp[1]",
        "IKE proposals only",
    ),
    (
        "peer-lifetime-syntax",
        setter("peer", "ike_lifetime", "4 hours"),
        "peer[0].ike_lifetime",
        "'4 hours' is not a duration",
    ),
    (
        "peer-lifetime-type",
        setter("peer", "ike_lifetime", True),
        "peer[0].ike_lifetime",
        "got boolean",
    ),
    (
        "peer-lifetime-short",
        setter("peer", "ike_lifetime", "2s"),
        "peer[0].ike_lifetime",
        "2s is out of range (5s .. 2592000s)",
    ),
    (
        "peer-child-lifetime",
        setter("peer", "child_lifetime", "31d"),
        "peer[0].child_lifetime",
        "out of range",
    ),
    (
        "peer-jitter",
        setter("peer", "rekey_jitter", 0.9),
        "peer[0].rekey_jitter",
        "0.9 is out of range (0 .. 0.5)",
    ),
    (
        "peer-jitter-type",
        setter("peer", "rekey_jitter", "0.1"),
        "peer[0].rekey_jitter",
        "expected a number, got string",
    ),
    (
        "peer-packets",
        setter("peer", "child_packet_limit", 1 << 28),
        "peer[0].child_packet_limit",
        "out of range",
    ),
    (
        "peer-bytes",
        setter("peer", "child_byte_limit", "64 parsecs"),
        "peer[0].child_byte_limit",
        "is not a size",
    ),
    (
        "peer-bytes-range",
        setter("peer", "child_byte_limit", 1000),
        "peer[0].child_byte_limit",
        "1000 is out of range",
    ),
    (
        "peer-dpd",
        setter("peer", "dpd_delay", 0.5),
        "peer[0].dpd_delay",
        "must be 0 (off) or at least 1s",
    ),
    (
        "peer-dpd-action",
        setter("peer", "dpd_action", "hold"),
        "peer[0].dpd_action",
        "'hold' is not one of: restart, clear",
    ),
    (
        "peer-auth-backoff-short",
        setter("peer", "auth_failure_backoff", "0s"),
        "peer[0].auth_failure_backoff",
        "0s is out of range (1s .. 86400s)",
    ),
    (
        "peer-auth-backoff-syntax",
        setter("peer", "auth_failure_backoff", "soon"),
        "peer[0].auth_failure_backoff",
        "'soon' is not a duration",
    ),
    (
        "peer-delete-delay",
        setter("peer", "delete_delay", "10m"),
        "peer[0].delete_delay",
        "600s is out of range (0s .. 300s)",
    ),
    (
        "peer-replay",
        setter("peer", "replay_window", 16),
        "peer[0].replay_window",
        "16 is out of range (32 .. 1048576)",
    ),
    (
        "peer-save-keys",
        setter("peer", "save_keys", "yes"),
        "peer[0].save_keys",
        "expected a boolean (true/false), got string",
    ),
    (
        "peer-typo",
        setter("peer", "remote_subnet", ["10.0.0.0/8"]),
        "peer[0].remote_subnet",
        "unknown key; did you mean 'remote_subnets'?",
    ),
    ("peer-dup-name", second_peer(name="gw-b"), "peer[1].name", "'gw-b' is also peer[0]"),
    (
        "peer-dup-id",
        second_peer(id="gw-b.example.org"),
        "peer[1].id",
        "'gw-b.example.org' is also peer 'gw-b'",
    ),
    (
        "peer-overlap-peer",
        second_peer(remote_subnets=["203.0.113.64/26"]),
        "peer[1].remote_subnets[0]",
        "203.0.113.64/26 overlaps 203.0.113.0/24 of peer 'gw-b'",
    ),
    ("top-typo", lambda d: d.update(gatway={}), "gatway", "unknown key; did you mean 'gateway'?"),
    ("top-no-peer", lambda d: d.pop("peer"), "peer", "required key is missing"),
    ("top-no-identity", lambda d: d.pop("identity"), "identity", "required key is missing"),
]


@pytest.mark.parametrize(
    ("change", "key", "fragment"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_error_names_file_key_and_reason(
    confdir: Path, change: Mutator, key: str, fragment: str
) -> None:
    data = base()
    change(data)
    path = write(confdir, data)
    with pytest.raises(ConfigError) as info:
        load_config(path, now=NOW)
    err = info.value
    assert (err.file, err.key) == (path, key), str(err)
    assert fragment in err.reason, str(err)
    assert str(err) == f"{path}: {key}: {err.reason}"


def test_private_key_readable_by_others_is_refused(confdir: Path) -> None:
    (confdir / "pki" / "gw-a.key").chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load(confdir, base())
    assert info.value.key == "identity.private_key"
    key_path = confdir / "pki" / "gw-a.key"
    assert (
        f"private key file {key_path} is accessible by group/others (mode 0644)"
        in info.value.reason
    )


@pytest.mark.parametrize(
    ("content", "mode", "fragment"),
    [
        (b"0123456789abcdef", 0o640, "is accessible by group/others (mode 0640)"),
        (b"  s3cr3t \n", 0o600, "is 6 bytes; at least 16 are required"),
        (b"0xnothex-nothex-nothex", 0o600, "'0x' prefix but not valid hex"),
        (b"0s!!!!not base64!!!!", 0o600, "'0s' prefix but not valid base64"),
    ],
    ids=["mode", "short", "hex", "base64"],
)
def test_psk_file_errors(confdir: Path, content: bytes, mode: int, fragment: str) -> None:
    write_private(confdir / "psk" / "gw-b.psk", content, mode)
    data = base()
    data["peer"][0]["psk_file"] = "psk/gw-b.psk"
    with pytest.raises(ConfigError) as info:
        load(confdir, data)
    assert info.value.key == "peer[0].psk_file"
    assert fragment in info.value.reason
    assert content.strip().decode() not in str(info.value)  # never the secret itself


def test_certificate_expiry(confdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(confdir, base()), now=NOW + dt.timedelta(days=400))
    assert info.value.key == "identity.certificate"
    assert "expired on" in info.value.reason


def test_unsupported_and_encrypted_keys(confdir: Path) -> None:
    key = ed448.Ed448PrivateKey.generate()
    plain = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(confdir / "pki" / "gw-a.key", plain)
    with pytest.raises(ConfigError, match=r"identity\.private_key: unsupported key type Ed448"):
        load(confdir, base())
    sealed = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    write_private(confdir / "pki" / "gw-a.key", sealed)
    with pytest.raises(ConfigError, match=r"identity\.private_key: private key .* is encrypted"):
        load(confdir, base())


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[gateway\nname = 1", "invalid TOML"),
        ("[[peer]]\nname = 'x'\n[peer]\n", "invalid TOML"),
        (
            "peer = 'gw-b'\n[gateway]\nname='a'\n[identity]\nid='a.example'\n",
            "peer: write peers as [[peer]]",
        ),
        (
            "peer = []\n[gateway]\nname='a'\n[identity]\nid='a.example'\n",
            "peer: at least one [[peer]]",
        ),
        (
            "peer = [3]\n[gateway]\nname='a'\n[identity]\nid='a.example'\n",
            "peer[0]: expected a table, got integer",
        ),
    ],
)
def test_file_level_errors(confdir: Path, text: str, fragment: str) -> None:
    path = confdir / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, now=NOW)
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


def test_data_thread_is_off_unless_asked(confdir: Path) -> None:
    data = base()
    assert load_config(write(confdir, data), now=NOW).gateway.data_thread is False
    setter("gateway", "data_thread", True)(data)
    assert load_config(write(confdir, data), now=NOW).gateway.data_thread is True


def test_busy_poll_is_off_unless_asked(confdir: Path) -> None:
    data = base()
    assert load_config(write(confdir, data), now=NOW).gateway.busy_poll_us == 0
    setter("gateway", "data_thread", True)(data)
    setter("gateway", "busy_poll_us", 800)(data)
    assert load_config(write(confdir, data), now=NOW).gateway.busy_poll_us == 800


def test_tso_is_off_unless_asked(confdir: Path) -> None:
    data = base()
    assert load_config(write(confdir, data), now=NOW).gateway.tso is False
    setter("gateway", "tso", True)(data)
    assert load_config(write(confdir, data), now=NOW).gateway.tso is True
