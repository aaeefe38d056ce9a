"""Failures an operator can act on: one WARNING line with ``peer=`` and the remote
address, and ``last_error`` on both sides naming the cause (issue 11; peer rule 13).

One test per failure class, two in-process daemons over memory links on trio's
virtual clock (tests/helpers/daemon_memory). gw-a initiates (``auto = start``),
gw-b listens; gw-a's peer is called gw-b and gw-b's peer gw-a, so the ``peer``
field says which side logged a line. Logs are captured through the daemon's
own handler (:func:`tunneld.log.setup_logging`, JSON), as an operator gets them.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from cryptography import x509

from ike.certs import subject_key_id
from tests.helpers.daemon_memory import Site, children, start_site, wait_for_children
from tools.lab import GWA_UNDERLAY, GWB_UNDERLAY, SiteOptions, write_psk, write_site_configs
from tunneld import pki
from tunneld.io.udp import MemoryNetwork
from tunneld.log import setup_logging

Record = dict[str, Any]


class Lines:
    """JSON log lines written by tunneld's handler, with trio's time of each."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def records(self) -> list[Record]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def warnings(self, peer: str) -> list[Record]:
        return [r for r in self.records() if r["level"] == "warning" and r.get("peer") == peer]

    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def lines() -> Iterator[Lines]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("tunneld").level
    captured = Lines()
    setup_logging("json", "info", captured.stream)
    yield captured
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("tunneld").setLevel(saved[2])


def peer_status(site: Site) -> Record:
    (peer,) = site.daemon.status()["peers"]
    result: Record = peer
    return result


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


async def run_pair(
    conf_a: Path, conf_b: Path | None, *, until: Any, timeout: float = 60
) -> tuple[Site, Site | None]:
    """Start gw-b (unless None), then gw-a; wait until ``until(a, b)`` holds."""
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        b = None if conf_b is None else (await start_site(nursery, conf_b, network))[0]
        a, _ = await start_site(nursery, conf_a, network)
        with trio.fail_after(timeout):
            while not until(a, b):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return a, b


def both_failed(a: Site, b: Site | None) -> bool:
    assert b is not None
    return bool(peer_status(a)["last_error"] and peer_status(b)["last_error"])


def one_warning(lines: Lines, peer: str, event: str) -> Record:
    """The side whose peer is ``peer`` logged its failure once at WARNING."""
    found = [r for r in lines.warnings(peer) if r.get("event") == event]
    assert len(found) == 1, (event, lines.warnings(peer))
    return found[0]


# -- authentication --------------------------------------------------------------------


async def test_wrong_ca(
    tmp_path: Path, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    """gw-a's certificate comes from an impostor CA with the trusted CA's very name:
    gw-b's line tells the two apart by key identifier."""
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions())
    rogue = tmp_path / "rogue"
    impostor = pki.init_ca(rogue / "ca", "tunneld lab CA")
    leaf = pki.issue(rogue / "ca", "gw-a", rogue, dns=["gw-a.example.org"], ips=[GWA_UNDERLAY])
    edit(conf_a, str(tmp_path / "pki" / "gw-a.pem"), str(leaf.certificate))
    edit(conf_a, str(tmp_path / "pki" / "gw-a.key"), str(leaf.key))
    real_ca = f'"{tmp_path / "pki" / "ca" / "ca.pem"}"'
    edit(conf_a, f"ca = [{real_ca}]", f'ca = ["{impostor.certificate}", {real_ca}]')  # own check
    a, b = await run_pair(conf_a, conf_b, until=both_failed)
    assert b is not None
    trusted = x509.load_pem_x509_certificate((tmp_path / "pki" / "ca" / "ca.pem").read_bytes())
    impostor_cert = x509.load_pem_x509_certificate(impostor.certificate.read_bytes())
    impostor_id = subject_key_id(impostor_cert)
    trusted_id = subject_key_id(trusted)
    assert impostor_id != trusted_id
    # the refusing side (gw-b): the cause, both CAs by name and key identifier
    refused = one_warning(lines, "gw-a", "auth_failed")
    assert refused["remote"].startswith(GWA_UNDERLAY + ":")
    for text in (refused["error"], peer_status(b)["last_error"]):
        assert "no trusted CA issued 'CN=gw-a'" in text, text
        assert "a trusted CA has the issuer's name but not its key" in text
        assert f"'CN=tunneld lab CA' key id {impostor_id}" in text  # the issuer
        assert f"trusted: 'CN=tunneld lab CA' key id {trusted_id}" in text
    assert "unauthenticated" in peer_status(b)["last_error"]
    # the initiator (gw-a): the notify it received, and when it tries again
    failed = one_warning(lines, "gw-b", "auth_failed")
    assert failed["msg"].startswith("authentication failed: IKE_AUTH failed: peer refused")
    assert "AUTHENTICATION_FAILED" in failed["msg"] and "next attempt in 30 s" in failed["msg"]
    assert "AUTHENTICATION_FAILED" in peer_status(a)["last_error"]
    assert children(a) == [] and children(b) == []


async def test_wrong_ca_refused_by_the_initiator_backs_off_too(
    tmp_path: Path, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    """gw-b (responder) presents a certificate gw-a does not trust: gw-a refuses it,
    tells gw-b (AUTHENTICATION_FAILED, §2.21.2) and waits before its next attempt."""
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions())
    rogue = tmp_path / "rogue"
    impostor = pki.init_ca(rogue / "ca", "tunneld lab CA")
    leaf = pki.issue(rogue / "ca", "gw-b", rogue, dns=["gw-b.example.org"], ips=[GWB_UNDERLAY])
    edit(conf_b, str(tmp_path / "pki" / "gw-b.pem"), str(leaf.certificate))
    edit(conf_b, str(tmp_path / "pki" / "gw-b.key"), str(leaf.key))
    real_ca = f'"{tmp_path / "pki" / "ca" / "ca.pem"}"'
    edit(conf_b, f"ca = [{real_ca}]", f'ca = ["{impostor.certificate}", {real_ca}]')
    a, b = await run_pair(conf_a, conf_b, until=both_failed)
    assert b is not None
    failed = one_warning(lines, "gw-b", "auth_failed")
    assert "no trusted CA issued 'CN=gw-b'" in failed["msg"] and " key id " in failed["msg"]
    assert failed["msg"].endswith("next attempt in 30 s"), failed
    assert "no trusted CA issued 'CN=gw-b'" in peer_status(a)["last_error"]
    told = one_warning(lines, "gw-a", "auth_failed")  # authenticated: gw-b's IKE SA was up
    assert "AUTHENTICATION_FAILED" in told["msg"] and "next attempt" not in told["msg"]
    assert "AUTHENTICATION_FAILED" in peer_status(b)["last_error"]
    assert children(a) == [] and children(b) == []


def wrong_psk(tmp_path: Path, backoff: str = "") -> tuple[Path, Path]:
    extra = f'auth_failure_backoff = "{backoff}"' if backoff else ""
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions(auth="psk", extra_peer=extra))
    (tmp_path / "other").mkdir()
    other = write_psk(tmp_path / "other")
    edit(conf_b, str(tmp_path / "psk.txt"), str(other))
    return conf_a, conf_b


async def test_wrong_psk(
    tmp_path: Path, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    conf_a, conf_b = wrong_psk(tmp_path)
    a, b = await run_pair(conf_a, conf_b, until=both_failed)
    assert b is not None
    refused = one_warning(lines, "gw-a", "auth_failed")
    assert "shared-key AUTH does not verify" in refused["error"], refused
    assert "shared-key AUTH does not verify" in peer_status(b)["last_error"]
    failed = one_warning(lines, "gw-b", "auth_failed")
    assert "AUTHENTICATION_FAILED" in failed["msg"] and "next attempt in 30 s" in failed["msg"]
    assert "AUTHENTICATION_FAILED" in peer_status(a)["last_error"]
    assert not re.search(r"0x[0-9a-f]{64}", lines.text())  # no PSK in any line


async def test_auth_failure_backs_off_doubling(
    tmp_path: Path, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    """auth_failure_backoff = 5s: attempts at +5, +10, +20 s; the line says so; the
    first failure is the WARNING, the repeats are INFO."""
    conf_a, conf_b = wrong_psk(tmp_path, backoff="5s")
    starts: list[float] = []

    def four_attempts(a: Site, b: Site | None) -> bool:
        initiating = [r for r in lines.records() if r["msg"] == "initiating IKE SA"]
        while len(starts) < len(initiating):
            starts.append(trio.current_time())
        return len(initiating) >= 4

    await run_pair(conf_a, conf_b, until=four_attempts, timeout=120)
    gaps = [round(later - earlier) for earlier, later in itertools.pairwise(starts)]
    assert gaps == [5, 10, 20], starts
    failures = [
        r for r in lines.records() if r.get("event") == "auth_failed" and r["peer"] == "gw-b"
    ]
    failures = failures[:3]  # the fourth attempt may have failed too meanwhile
    assert [r["level"] for r in failures] == ["warning", "info", "info"]
    said = [re.search(r"next attempt in (\d+) s", r["msg"]) for r in failures]
    assert [int(m.group(1)) for m in said if m] == [5, 10, 20]


# -- negotiation -----------------------------------------------------------------------


async def test_proposal_mismatch(
    tmp_path: Path, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions())
    edit(conf_b, '"aes256gcm16-prfsha256-x25519"', '"aes128gcm16-prfsha384-ecp384"')
    a, b = await run_pair(conf_a, conf_b, until=both_failed)
    assert b is not None
    refused = one_warning(lines, "gw-a", "proposal_mismatch")
    for text in (refused["error"], peer_status(b)["last_error"]):
        assert "NO_PROPOSAL_CHOSEN" in text, text
        assert "offered: #1 IKE:aes256gcm16-prfsha256-x25519" in text, text
        assert "configured: aes128gcm16-prfsha384-ecp384" in text, text
    failed = one_warning(lines, "gw-b", "proposal_mismatch")
    assert "NO_PROPOSAL_CHOSEN" in failed["msg"] and failed["remote"].startswith("192.0.2.")
    assert "NO_PROPOSAL_CHOSEN" in peer_status(a)["last_error"]


async def test_selector_mismatch(
    tmp_path: Path, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    """gw-b serves another remote site than gw-a's: it refuses the Child SA
    (authenticated: its IKE SA stays until gw-a deletes it) and says why."""
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions())
    edit(conf_b, 'remote_subnets = ["198.51.100.0/24"]', 'remote_subnets = ["192.0.2.192/26"]')
    a, b = await run_pair(conf_a, conf_b, until=both_failed)
    assert b is not None
    refused = one_warning(lines, "gw-a", "ts_mismatch")
    for text in (refused["msg"], peer_status(b)["last_error"]):
        assert "refused the peer's IKE_AUTH" in text and "TS_UNACCEPTABLE" in text, text
        assert "proposed 198.51.100.0-198.51.100.255" in text, text
        assert "configured 192.0.2.192-192.0.2.255" in text, text
    failed = one_warning(lines, "gw-b", "ts_mismatch")
    assert "TS_UNACCEPTABLE" in failed["msg"]
    assert "TS_UNACCEPTABLE" in peer_status(a)["last_error"]
    assert children(a) == [] and children(b) == []


# -- silence ---------------------------------------------------------------------------


async def test_unreachable_peer(
    tmp_path: Path, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    """Nobody answers: each retransmission is logged with its count, then one WARNING."""
    conf_a, _ = write_site_configs(tmp_path, "mem", SiteOptions())

    def gave_up(a: Site, b: Site | None) -> bool:
        return peer_status(a)["last_error"] is not None

    a, _ = await run_pair(conf_a, None, until=gave_up)
    retransmits = [r for r in lines.records() if r.get("event") == "retransmit"]
    total = retransmits[0]["of"]
    assert [r["transmission"] for r in retransmits] == list(range(2, total + 1))
    assert all(r["peer"] == "gw-b" and r["remote"] == "192.0.2.2:500" for r in retransmits)
    assert (
        retransmits[0]["msg"] == f"retransmitting IKE_SA_INIT request 0: transmission 2 of {total}"
    )
    failed = one_warning(lines, "gw-b", "unreachable")
    expected = f"peer unreachable: no response to IKE_SA_INIT after {total} transmissions"
    assert failed["msg"] == expected
    assert peer_status(a)["last_error"] == expected


# -- what the lines look like ------------------------------------------------------------


@pytest.fixture
async def debug_pair(tmp_path: Path) -> AsyncIterator[io.StringIO]:
    """An established pair whose log went through the text handler at --log-level debug."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("tunneld").level
    stream = io.StringIO()
    setup_logging("text", "debug", stream)
    try:
        conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions())
        network = MemoryNetwork()
        async with trio.open_nursery() as nursery:
            b, _ = await start_site(nursery, conf_b, network)
            a, _ = await start_site(nursery, conf_a, network)
            await wait_for_children(a, b)
            for name in ("pyroute2", "asyncio", "trio", "pyroute2.netlink"):
                logging.getLogger(name).debug("third-party debug detail")
            logging.getLogger("asyncio").warning("third-party warning")
            nursery.cancel_scope.cancel()
        yield stream
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("tunneld").setLevel(saved[2])


async def test_debug_shows_message_summaries_not_third_party_debug(
    debug_pair: io.StringIO, autojump_clock: trio.testing.MockClock
) -> None:
    text = debug_pair.getvalue()
    assert "third-party debug detail" not in text
    assert "asyncio: third-party warning" in text  # others stay at WARNING, not off
    trace = re.compile(
        r"DEBUG   tunneld\.ike: peer=(gw-a|gw-b) (sent|parsed) "
        r"(IKE_SA_INIT|IKE_AUTH|CREATE_CHILD_SA|INFORMATIONAL) (request|response) \d+ "
        r"\[ ([A-Za-z]+(\([A-Z_0-9]+\))? )*\]( |$)"
    )
    summaries = [line for line in text.splitlines() if " sent " in line or " parsed " in line]
    assert summaries and all(trace.search(line) for line in summaries), summaries
    # gw-a's view of its IKE_AUTH, as charon writes it
    assert re.search(
        r"peer=gw-b sent IKE_AUTH request 1 "
        r"\[ IDi CERT (CERTREQ )?(N\(\w+\) )*IDr AUTH (N\(\w+\) )*SA TSi TSr ",
        text,
    ), text
    assert re.search(r"peer=gw-a parsed IKE_AUTH request 1 \[ IDi CERT ", text)
    assert re.search(r"peer=gw-b parsed IKE_SA_INIT response 0 \[ SA KE No ", text)


async def test_json_lines_carry_peer_and_remote_as_keys(
    tmp_path: Path, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    logging.getLogger("tunneld").setLevel(logging.DEBUG)
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions())
    await run_pair(conf_a, conf_b, until=lambda a, b: children(a) and b and children(b))
    ike = [r for r in lines.records() if r["logger"] == "tunneld.ike"]
    assert ike, "no tunneld.ike line"
    assert all(r["peer"] in ("gw-a", "gw-b") and r["remote"] for r in ike), ike
    message = next(r for r in ike if r.get("event") == "ike_message")
    assert message["msg"].startswith(("sent ", "parsed ")) and "peer=" not in message["msg"]
    # a message we send names where it goes: IKE_AUTH already on the NAT-T port
    (auth,) = [r for r in ike if r["msg"].startswith("sent IKE_AUTH request 1 ")]
    assert (auth["peer"], auth["remote"], auth["message_id"]) == ("gw-b", "192.0.2.2:4500", 1)
    peer_lines = [r for r in lines.records() if r["logger"] == "tunneld.peer"]
    assert all(isinstance(r.get("peer"), str) for r in peer_lines), peer_lines


async def test_dead_peer(
    tmp_path: Path, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    """gw-b vanishes without a DELETE: gw-a's liveness check goes unanswered."""
    extra = 'dpd_delay = "5s"\ndpd_action = "clear"'
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions(extra_peer=extra))
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        b, cancel_b = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        await wait_for_children(a, b)
        cancel_b.cancel()  # no DELETE: as if it lost power
        with trio.fail_after(120):
            while peer_status(a)["last_error"] is None:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    dead = one_warning(lines, "gw-b", "peer_dead")
    assert dead["msg"] == "peer dead" and dead["action"] == "clear"
    assert dead["remote"] == "192.0.2.2:4500"
    assert dead["reason"].startswith("peer dead: no answer to a liveness check after")
    assert peer_status(a)["last_error"] == dead["reason"]
    assert not [r for r in lines.warnings("gw-b") if r.get("event") == "ike_failed"]
