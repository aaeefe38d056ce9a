"""``tunneld reload`` on two in-memory daemons (virtual clock): what each kind of
change does to the SAs (tunneld/reload.py rule 3), refusals, and the service
manager's notifications (RELOADING=1 then READY=1, as Type=notify-reload expects).
The namespace version with real daemons, a hub and 1 ms probes:
tests/netns/test_reload_netns.py."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.helpers.daemon_memory import (
    Pair,
    Site,
    children,
    established,
    start_site,
    wait_for_children,
)
from tests.helpers.hubs import spoke_id, write_hub_configs
from tests.helpers.packets import udp_packet
from tools.lab import GWB_UNDERLAY
from tunneld import cli, pki
from tunneld.io.udp import MemoryNetwork


def spis(site: Site) -> set[str]:
    return {c["spi_in"] for c in children(site)}


def edit(site: Site, old: str, new: str) -> None:
    path = site.daemon.config.path
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


async def traffic_while(pair: Pair, work: object, packets: int = 300) -> tuple[int, int]:
    """One packet each way every 10 ms while ``work`` (an async callable) runs; how many
    arrived at B and at A (after a settling pause)."""
    tun_a, tun_b = pair.a.devices.tun, pair.b.devices.tun
    assert tun_a is not None and tun_b is not None
    tun_a.host_recv_nowait()
    tun_b.host_recv_nowait()

    async def send() -> None:
        for i in range(packets):
            tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", b"a->b %d" % i))
            tun_b.host_send(udp_packet("203.0.113.10", "198.51.100.10", b"b->a %d" % i))
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.sleep(0.3)
        await work()  # type: ignore[operator]
    await trio.sleep(0.5)
    return len(tun_b.host_recv_nowait()), len(tun_a.host_recv_nowait())


async def test_identical_file_and_lifetimes_keep_the_sas(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    before, ike_before = spis(pair.a), established(pair.a.daemon)[0]["spi_i"]
    answer = await pair.a.daemon.reload()
    assert answer == {
        "ok": True,
        "changes": {
            "added": [], "removed": [], "unchanged": ["gw-b"], "updated": [],
            "reauthenticated": [], "restarted": [], "keys": {},
        },
    }  # fmt: skip
    edit(pair.a, "[[peer]]\n", '[[peer]]\nchild_lifetime = "10m"\n')
    (child,) = children(pair.a)
    assert child["rekey_in"] > 3000  # the default hour, less jitter
    answer = await pair.a.daemon.reload()
    assert answer["changes"]["updated"] == ["gw-b"]
    assert answer["changes"]["keys"] == {"gw-b": ["child_lifetime"]}
    await trio.sleep(2)
    # no re-establishment: the same SAs, their deadlines as they were
    assert spis(pair.a) == before and established(pair.a.daemon)[0]["spi_i"] == ike_before
    (child,) = children(pair.a)
    assert child["rekey_in"] > 3000
    # the next rekey makes a Child SA with the new lifetime
    assert (await pair.a.daemon._control({"cmd": "rekey", "peer": "gw-b"}))["ok"]
    with trio.fail_after(10):
        while spis(pair.a) & before or not spis(pair.a):
            await trio.sleep(0.05)
    (child,) = children(pair.a)
    assert 500 < child["rekey_in"] <= 600


async def test_new_proposals_reauthenticate_make_before_break(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    ike_before = established(pair.a.daemon)[0]["spi_i"]
    before_a, before_b = spis(pair.a), spis(pair.b)
    edit(
        pair.a,
        'ike = ["aes256gcm16-prfsha256-x25519"]',
        'ike = ["aes256gcm16-prfsha256-x25519", "aes128gcm16-prfsha256-ecp256"]',
    )
    answers = []

    async def reload() -> None:
        answers.append(await pair.a.daemon.reload())

    got_b, got_a = await traffic_while(pair, reload)
    assert answers[0]["changes"]["reauthenticated"] == ["gw-b"]
    assert answers[0]["changes"]["keys"] == {"gw-b": ["ike"]}
    assert (got_b, got_a) == (300, 300)  # not one packet lost either way
    with trio.fail_after(15):
        while len(established(pair.a.daemon)) != 1 or len(established(pair.b.daemon)) != 1:
            await trio.sleep(0.05)
    (ike_a,) = established(pair.a.daemon)
    (ike_b,) = established(pair.b.daemon)
    assert ike_a["spi_i"] != ike_before and ike_a["spi_i"] == ike_b["spi_i"]
    assert not ike_b["superseded"]
    assert not spis(pair.a) & before_a and not spis(pair.b) & before_b
    (peer_b,) = pair.b.daemon.status()["peers"]
    assert peer_b["last_error"] is None  # the old IKE SA went with a DELETE, not by DPD


async def test_other_subnets_restart_the_peer(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    before = spis(pair.a)
    edit(pair.a, 'local_subnets = ["198.51.100.0/24"]', 'local_subnets = ["198.51.100.0/25"]')
    answer = await pair.a.daemon.reload()
    assert answer["changes"]["restarted"] == ["gw-b"]
    with trio.fail_after(15):
        while not spis(pair.a) or spis(pair.a) & before:
            await trio.sleep(0.05)
    (child,) = children(pair.a)
    assert child["local_ts"] == ["198.51.100.0/25"]
    tunnel = pair.a.daemon.sadb.tunnel("gw-b")
    assert tunnel.snapshot()["local"] == ["198.51.100.0/25"]


async def test_an_invalid_file_is_refused_and_nothing_changes(
    pair: Pair, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await wait_for_children(pair.a, pair.b)
    before, config = spis(pair.a), pair.a.daemon.config
    edit(pair.a, "[[peer]]\n", '[[peer]]\nchild_lifetim = "10m"\n')
    answer = await pair.a.daemon.reload()
    assert answer["ok"] is False
    assert (
        str(config.path) in answer["error"]
        and "peer[0].child_lifetim: unknown key" in answer["error"]
    )
    edit(pair.a, 'child_lifetim = "10m"\n', "")
    edit(pair.a, "mtu = 1400", "mtu = 1300")
    answer = await pair.a.daemon.reload()
    assert (
        answer["ok"] is False and "gateway.mtu: cannot change while tunneld runs" in answer["error"]
    )
    assert pair.a.daemon.config is config and spis(pair.a) == before
    refusals = [
        r for r in caplog.records if r.getMessage().startswith("configuration reload refused")
    ]
    assert [r.levelname for r in refusals] == ["ERROR", "ERROR"]
    assert [r.key for r in refusals] == ["peer[0].child_lifetim", "gateway.mtu"]  # type: ignore[attr-defined]


async def test_the_service_manager_hears_reloading_then_ready(
    pair: Pair,
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Type=notify-reload: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC), then READY=1;
    a refused reload sends nothing (the daemon never stopped being ready)."""
    await wait_for_children(pair.a, pair.b)
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        manager.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        start = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert (await pair.a.daemon.reload())["ok"]
        end = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        reloading = manager.recv(4096).decode().split("\n")
        ready = manager.recv(4096).decode().split("\n")
        assert reloading[0] == "RELOADING=1" and ready[0] == "READY=1"
        (usec,) = [int(v.split("=")[1]) for v in reloading if v.startswith("MONOTONIC_USEC=")]
        assert start <= usec <= end
        edit(pair.a, "mtu = 1400", "mtu = 1300")
        assert not (await pair.a.daemon.reload())["ok"]
        with pytest.raises(BlockingIOError):
            manager.recv(4096)


async def test_credentials_apply_at_the_next_authentication(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    """gw-b's certificate is renewed by a second CA: the reload keeps the tunnel, and
    the next authentication presents the new certificate (gw-a, trusting only the
    first CA, refuses it); once gw-a reloads a trust list with the second CA, the
    next authentication succeeds."""
    await wait_for_children(pair.a, pair.b)
    before_a, before_b = spis(pair.a), spis(pair.b)
    pki_dir = pair.b.daemon.config.path.parent / "pki"
    pki.init_ca(pki_dir / "ca2", "tunneld second CA")
    pki.issue(
        pki_dir / "ca2", "gw-b", pki_dir, dns=["gw-b.example.org"], ips=[GWB_UNDERLAY], force=True
    )
    ca1, ca2 = f'"{pki_dir / "ca" / "ca.pem"}"', f'"{pki_dir / "ca2" / "ca.pem"}"'
    edit(pair.b, f"ca = [{ca1}]", f"ca = [{ca1}, {ca2}]")
    answer = await pair.b.daemon.reload()
    assert answer["changes"]["updated"] == ["gw-a"]
    assert answer["changes"]["keys"] == {"gw-a": ["credentials"]}
    await trio.sleep(3)
    assert spis(pair.a) == before_a and spis(pair.b) == before_b  # nothing dropped
    # the next authentication: gw-b presents the renewed certificate
    control = pair.a.daemon._control
    assert (await control({"cmd": "down", "peer": "gw-b"}))["ok"]
    await trio.sleep(1)
    assert (await control({"cmd": "up", "peer": "gw-b"}))["ok"]
    with trio.fail_after(20):
        while not pair.a.daemon.status()["peers"][0]["last_error"]:
            await trio.sleep(0.05)
    error = pair.a.daemon.status()["peers"][0]["last_error"]
    assert "no trusted CA issued 'CN=gw-b'" in error and "'CN=tunneld second CA'" in error, error
    assert not children(pair.a)
    # gw-a trusts the second CA too: the next authentication succeeds
    edit(pair.a, f"ca = [{ca1}]", f"ca = [{ca1}, {ca2}]")
    answer = await pair.a.daemon.reload()
    assert answer["changes"]["keys"] == {"gw-b": ["credentials"]}
    assert (await control({"cmd": "up", "peer": "gw-b"}))["ok"]
    await wait_for_children(pair.a, pair.b)
    assert pair.a.daemon.status()["peers"][0]["last_error"] is None


async def test_a_pattern_entry_reloads_with_its_spokes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A hub's identity-pattern entry: new lifetimes reach its spokes in place, new
    proposals make them reconnect (DELETE: the hub cannot initiate to a spoke), a new
    pool restarts the entry (its spokes go and come back)."""
    files = write_hub_configs(tmp_path, "pattern", spokes=2, extra='dpd_delay = "0s"\n')
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        hub, _ = await start_site(nursery, files.hub, network)
        for path in files.spokes:
            await start_site(nursery, path, network)
        names = {f"branches/{spoke_id(k)}" for k in (1, 2)}

        def up() -> dict[str, set[str]]:
            return {
                p["name"]: {c["spi_in"] for c in p["child_sas"]}
                for p in hub.daemon.status()["peers"]
                if p["state"] == "established" and p["child_sas"]
            }

        async def until_up(old: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
            with trio.fail_after(30):
                while set(up()) != names or (old and any(up()[n] & old[n] for n in names)):
                    await trio.sleep(0.05)
            return up()

        before = await until_up()
        edit(hub, "[[peer]]\n", '[[peer]]\nchild_lifetime = "10m"\n')
        answer = await hub.daemon.reload()
        assert answer["changes"]["updated"] == ["branches"]
        await trio.sleep(2)
        assert up() == before
        one = f"branches/{spoke_id(1)}"
        assert (await hub.daemon._control({"cmd": "rekey", "peer": one}))["ok"]
        rekeyed = await until_up({one: before[one], f"branches/{spoke_id(2)}": set()})
        (child,) = [
            c for p in hub.daemon.status()["peers"] if p["name"] == one for c in p["child_sas"]
        ]
        assert child["rekey_in"] <= 600  # the spoke's next SA got the entry's new lifetime

        edit(hub, "[[peer]]\n", '[[peer]]\nesp = ["aes128gcm16", "aes256gcm16"]\n')
        answer = await hub.daemon.reload()
        assert answer["changes"]["reauthenticated"] == ["branches"]
        reconnected = await until_up(rekeyed)

        edit(hub, 'remote_subnets = ["203.0.113.0/24"]', 'remote_subnets = ["203.0.113.0/25"]')
        answer = await hub.daemon.reload()
        assert answer["changes"]["restarted"] == ["branches"]
        await until_up(reconnected)
        (hub_status,) = hub.daemon.status()["reception"]["hubs"]
        assert hub_status["spokes"] == 2
        nursery.cancel_scope.cancel()


async def test_the_verb_reports_a_refusal_and_a_summary(
    pair: Pair, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """`tunneld reload -c FILE` (real time: the command line blocks in a thread). A file
    that no longer passes the checks still reaches the daemon, which refuses it and
    logs why; the verb exits 2 with the file, key and reason."""
    await wait_for_children(pair.a, pair.b)
    path = pair.a.daemon.config.path
    edit(pair.a, "[[peer]]\n", '[[peer]]\nchild_lifetim = "10m"\n')
    code = await trio.to_thread.run_sync(cli.main, ["reload", "-c", str(path)])
    assert code == 2
    reason = f"{path}: peer[0].child_lifetim: unknown key; did you mean 'child_lifetime'?"
    assert capsys.readouterr().err == f"tunneld: reload refused: {reason}\n"
    (refusal,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert refusal.name == "tunneld.daemon" and refusal.error in reason  # type: ignore[attr-defined]
    edit(pair.a, 'child_lifetim = "10m"', 'child_lifetime = "10m"')
    code = await trio.to_thread.run_sync(cli.main, ["reload", "-c", str(path)])
    assert code == 0
    assert capsys.readouterr().out == "reload: 1 updated (gw-b)\n  gw-b: child_lifetime\n"


async def test_a_replacement_that_fails_takes_the_old_ike_sa_along(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    """peer.py rule 14: proposals the peer refuses. The old IKE SA carries on until the
    new one has failed, then goes too: the configuration in force is the new one, and
    last_error says why the peer is down."""
    await wait_for_children(pair.a, pair.b)
    edit(pair.a, 'ike = ["aes256gcm16-prfsha256-x25519"]', 'ike = ["aes128gcm16-prfsha256-ecp256"]')
    answer = await pair.a.daemon.reload()
    assert answer["changes"]["reauthenticated"] == ["gw-b"]
    assert children(pair.a)  # the old SAs carry on meanwhile
    with trio.fail_after(30):
        while children(pair.a) or established(pair.a.daemon):
            await trio.sleep(0.05)
    (peer,) = pair.a.daemon.status()["peers"]
    assert "NO_PROPOSAL_CHOSEN" in peer["last_error"], peer["last_error"]
    with trio.fail_after(30):  # gw-b heard the DELETE: no liveness check needed
        while established(pair.b.daemon):
            await trio.sleep(0.05)
    (peer_b,) = pair.b.daemon.status()["peers"]
    assert peer_b["counters"]["dead_peer_detections"] == 0
