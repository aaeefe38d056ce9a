"""tunneld.metrics: the [metrics] section, the collector's labels and counters, and the
HTTP endpoint's bounds (real loopback sockets, real clock).

The collector is fed by a fake daemon here (what it reads: status(), the peers'
traffic totals and handshake times); tests/daemon/test_metrics_memory.py scrapes
two real daemons, tests/netns/test_metrics_netns.py has Prometheus scrape one.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.configfiles import NOW, base, load, make_confdir, make_pki
from tunneld import metrics
from tunneld.childsas import Traffic
from tunneld.config import ConfigError, describe, load_config
from tunneld.daemon import DispatchStats
from tunneld.durations import Durations
from tunneld.metrics import Collector, Endpoint

# -- [metrics] in the configuration file ---------------------------------------------------


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def confdir(tmp_path: Path, pki_dir: Path) -> Path:
    return make_confdir(tmp_path, pki_dir)


def test_without_a_metrics_section_there_is_no_endpoint(confdir: Path) -> None:
    assert load(confdir, base()).metrics is None


@pytest.mark.parametrize(
    ("listen", "shown"),
    [("192.0.2.1:9108", "192.0.2.1:9108"), ("[2001:db8::1]:9108", "[2001:db8::1]:9108"),
     ("127.0.0.1:1", "127.0.0.1:1"), ("[::]:65535", "[::]:65535")],
)  # fmt: skip
def test_metrics_listen_takes_an_address_and_a_port(confdir: Path, listen: str, shown: str) -> None:
    config = load(confdir, {**base(), "metrics": {"listen": listen}})
    assert config.metrics is not None and config.metrics.listen == shown
    assert f"metrics on http://{shown}/metrics" in describe(config)  # tunneld check


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ({}, "metrics.listen", "required key is missing"),
        ({"listen": 9108}, "metrics.listen", "expected a string, got integer"),
        ({"listen": "192.0.2.1"}, "metrics.listen", "not ADDRESS:PORT"),
        ({"listen": "192.0.2.1:"}, "metrics.listen", "the port must be 1 .. 65535"),
        ({"listen": "192.0.2.1:0"}, "metrics.listen", "the port must be 1 .. 65535"),
        ({"listen": "192.0.2.1:65536"}, "metrics.listen", "the port must be 1 .. 65535"),
        ({"listen": "192.0.2.1:٣"}, "metrics.listen", "the port must be 1 .. 65535"),
        ({"listen": "localhost:9108"}, "metrics.listen", "not an IPv4/IPv6 address"),
        ({"listen": "2001:db8::1:9108"}, "metrics.listen", "write an IPv6 address in brackets"),
        ({"listen": "[192.0.2.1]:9108"}, "metrics.listen", "only IPv6 addresses"),
        ({"listen": "192.0.2.1:9108", "port": 1}, "metrics.port", "unknown key"),
    ],
)
def test_a_bad_metrics_section_names_file_key_and_reason(
    confdir: Path, table: dict[str, Any], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(confdir, {**base(), "metrics": table})
    assert err.value.key == key and reason in err.value.reason, err.value
    assert err.value.file.name == "gw.toml"


def test_metrics_written_as_a_value_is_refused(confdir: Path) -> None:
    path = confdir / "gw.toml"
    from tests.helpers.configfiles import to_toml

    path.write_text('metrics = "192.0.2.1:9108"\n' + to_toml(base()))
    with pytest.raises(ConfigError) as err:
        load_config(path, now=NOW)
    assert err.value.key == "metrics" and "expected a table" in err.value.reason


# -- the collector, on a fake daemon ---------------------------------------------------------


@dataclass
class FakeChildren:
    totals: Traffic = field(default_factory=Traffic)

    def traffic(self) -> Traffic:
        return Traffic(**vars(self.totals))


@dataclass
class FakePeer:
    name: str
    state: str = "established"
    ike_sas: int = 1
    child_sas: int = 1
    counters: dict[str, int] = field(default_factory=dict)
    status: Any = field(default_factory=lambda: SimpleNamespace(handshakes=Durations()))
    children: FakeChildren = field(default_factory=FakeChildren)

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "half_open_ike_sas": 0,
            "ike_sas": [{"state": "established"}] * self.ike_sas + [{"state": "auth_sent"}],
            "child_sas": [{}] * self.child_sas,
            "counters": self.counters,
        }


class FakeDaemon:
    def __init__(self, entries: list[tuple[str, bool]]) -> None:
        self.config = SimpleNamespace(
            peers=[SimpleNamespace(name=n, is_pattern=pattern) for n, pattern in entries]
        )
        self.peers: dict[str, FakePeer] = {}
        self.dispatch = DispatchStats()
        self.extra: dict[str, Any] = {}

    def add(self, peer: FakePeer) -> FakePeer:
        self.peers[peer.name] = peer
        return peer

    def status(self) -> dict[str, Any]:
        return {
            "peers": [p.snapshot() for p in self.peers.values()],
            "ike_dispatch": vars(self.dispatch),
            **self.extra,
        }


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(collector: Collector) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def test_a_hubs_spokes_add_up_under_the_entry_name_and_no_identity_becomes_a_label() -> None:
    daemon = FakeDaemon([("gw-b", False), ("branches", True)])
    daemon.add(FakePeer("gw-b", counters={"ike_rekeys": 2}))
    for i, identity in enumerate(('cn=evil"},{x="1', "o=a\\nb")):
        spoke = daemon.add(FakePeer(f"branches/{identity}", state="connecting" if i else "down"))
        spoke.children.totals.packets_in = 10 * (i + 1)
    m = samples(Collector(daemon))  # type: ignore[arg-type]
    assert m[key("tunneld_peer_ike_sas", peer="branches")] == 2
    assert m[key("tunneld_peer_spokes", peer="branches")] == 2
    assert m[key("tunneld_peer_packets_total", peer="branches", direction="in")] == 30
    assert m[key("tunneld_peer_state", peer="branches", state="connecting")] == 1
    assert m[key("tunneld_peer_state", peer="gw-b", state="established")] == 1
    assert m[key("tunneld_peer_ike_rekeys_total", peer="gw-b")] == 2
    assert key("tunneld_peer_spokes", peer="gw-b") not in m  # not a pattern entry
    labels = {v for _, pairs in m for _, v in pairs}
    assert not any("cn=" in v or "o=a" in v for v in labels), labels


def test_a_peer_not_configured_is_not_exposed() -> None:
    daemon = FakeDaemon([("gw-b", False)])
    daemon.add(FakePeer("gw-b"))
    daemon.add(FakePeer("removed-by-reload"))
    m = samples(Collector(daemon))  # type: ignore[arg-type]
    assert {dict(labels).get("peer") for _, labels in m} == {None, "gw-b"}


def test_counters_of_a_peer_object_that_goes_stay_in_its_entry() -> None:
    daemon = FakeDaemon([("gw-b", False), ("hub", True)])
    old = daemon.add(FakePeer("gw-b", counters={"child_rekeys": 3}))
    old.children.totals.bytes_out = 1000
    old.status.handshakes.observe(0.02)
    spoke = daemon.add(FakePeer("hub/one"))
    spoke.children.totals.packets_out = 7
    collector = Collector(daemon)  # type: ignore[arg-type]
    first = samples(collector)
    assert first[key("tunneld_peer_bytes_total", peer="gw-b", direction="out")] == 1000

    # gw-b's peer object is replaced (a reload), the spoke is reaped, a new one comes
    new = daemon.add(FakePeer("gw-b", counters={"child_rekeys": 1}))
    new.children.totals.bytes_out = 5
    new.status.handshakes.observe(3.0)
    del daemon.peers["hub/one"]
    daemon.add(FakePeer("hub/two")).children.totals.packets_out = 2
    m = samples(collector)
    assert m[key("tunneld_peer_bytes_total", peer="gw-b", direction="out")] == 1005
    assert m[key("tunneld_peer_child_rekeys_total", peer="gw-b")] == 4
    assert m[key("tunneld_peer_handshake_duration_seconds_count", peer="gw-b")] == 2
    assert m[key("tunneld_peer_handshake_duration_seconds_bucket", peer="gw-b", le="0.025")] == 1
    assert m[key("tunneld_peer_handshake_duration_seconds_bucket", peer="gw-b", le="5.0")] == 2
    assert m[key("tunneld_peer_handshake_duration_seconds_sum", peer="gw-b")] == 3.02
    assert m[key("tunneld_peer_packets_total", peer="hub", direction="out")] == 9
    assert samples(collector) == m  # nothing carried twice


def test_drop_reasons_are_the_fixed_sets_whatever_the_counters_hold() -> None:
    daemon = FakeDaemon([("gw-b", False)])
    daemon.dispatch.unknown_spi = 4
    daemon.dispatch.cookies_sent = 9
    daemon.extra = {
        "dataplane": {
            "pumps": {
                "inbound": {"packets": 12, "drops": {"replay": 2, "made-up reason": 5}},
                "outbound": {"packets": 3, "drops": {"no_policy": 1}},
            }
        },
        "front_door": {"half_open": 6, "decisions": {"cookie requested": 9, "bogus": 1}},
    }
    m = samples(Collector(daemon))  # type: ignore[arg-type]
    assert m[key("tunneld_dataplane_drops_total", direction="in", reason="replay")] == 2
    assert m[key("tunneld_dataplane_drops_total", direction="out", reason="no_policy")] == 1
    assert m[key("tunneld_dataplane_packets_total", direction="in")] == 12
    assert m[key("tunneld_ike_drops_total", reason="unknown_spi")] == 4
    assert m[key("tunneld_ike_cookies_sent_total")] == 9
    assert m[key("tunneld_ike_half_open")] == 6
    assert m[key("tunneld_ike_front_door_decisions_total", decision="cookie requested")] == 9
    drops = ("tunneld_dataplane_drops_total", "tunneld_ike_drops_total")
    reasons = {dict(labels)["reason"] for name, labels in m if name in drops}
    assert reasons == set(metrics.DATAPLANE_DROP_REASONS) | set(metrics.IKE_DROP_REASONS)
    decisions = {dict(labels)["decision"] for name, labels in m if "decisions" in name}
    assert "bogus" not in decisions


def test_every_dispatcher_counter_is_a_drop_reason_or_counted_apart() -> None:
    fields = set(vars(DispatchStats()))
    assert fields == set(metrics.IKE_DROP_REASONS) | {"cookies_sent", "peer_task_resets"}


def test_durations_buckets_are_cumulative_and_inclusive() -> None:
    d = Durations((0.1, 1.0))
    for seconds in (0.1, 0.5, 2.0, -1.0, math.nan):
        d.observe(seconds)
    assert d.cumulative() == [(0.1, 3), (1.0, 4), (math.inf, 5)]
    assert d.count == 5 and d.total == pytest.approx(2.6)
    with pytest.raises(ValueError):
        Durations((1.0, 0.5))


# -- the endpoint ------------------------------------------------------------------------------


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    daemon = FakeDaemon([("gw-b", False)])
    daemon.add(FakePeer("gw-b"))
    ep = Endpoint.open("127.0.0.1", 0)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(ep.serve, daemon)
            yield ep
            nursery.cancel_scope.cancel()
    finally:
        ep.close()


async def exchange(ep: Endpoint, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", ep.port)
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data


async def settled(ep: Endpoint) -> None:
    """Until no exchange is open (an error answer drains the client's rest first)."""
    with trio.fail_after(5):
        while ep.stats.active:
            await trio.sleep(0.01)


def head_and_body(response: bytes) -> tuple[list[str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head.decode().split("\r\n"), body


async def test_get_metrics_serves_the_text_exposition(endpoint: Endpoint) -> None:
    lines, body = head_and_body(
        await exchange(endpoint, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    )
    assert lines[0] == "HTTP/1.1 200 OK"
    assert "Content-Type: text/plain; version=0.0.4; charset=utf-8" in lines
    assert f"Content-Length: {len(body)}" in lines and "Connection: close" in lines
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"tunneld_peer_ike_sas", "tunneld_metrics_requests", "process_cpu_seconds"} <= names
    lines, body = head_and_body(await exchange(endpoint, b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"))
    assert lines[0] == "HTTP/1.1 200 OK" and body == b""
    assert endpoint.stats.results["ok"] == 2


@pytest.mark.parametrize(
    ("request_bytes", "status", "result"),
    [
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405", "method_not_allowed"),
        (b"GET / HTTP/1.1\r\n\r\n", "404", "not_found"),
        (b"GET /metrics/../etc HTTP/1.1\r\n\r\n", "404", "not_found"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "400", "bad_request"),
        (b"GET /metrics SPDY/3\r\n\r\n", "400", "bad_request"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", "431", "too_large"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000, "431", "too_large"),
    ],
    ids=["post", "root", "other-path", "tls", "not-http", "long-head", "endless-head"],
)
async def test_anything_but_a_get_of_metrics_is_refused_and_counted(
    endpoint: Endpoint, request_bytes: bytes, status: str, result: str
) -> None:
    lines, _ = head_and_body(await exchange(endpoint, request_bytes))
    assert lines[0].startswith(f"HTTP/1.1 {status} "), lines
    await settled(endpoint)
    assert endpoint.stats.results[result] == 1
    lines, _ = head_and_body(await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n"))
    assert lines[0] == "HTTP/1.1 200 OK"  # and it goes on serving


async def test_a_client_that_sends_nothing_is_cut_off_and_a_ninth_is_refused(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 0.5)
    idle = [await trio.open_tcp_stream("127.0.0.1", endpoint.port) for _ in range(8)]
    with trio.fail_after(5):
        while endpoint.stats.active < 8:
            await trio.sleep(0.01)
    ninth = await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert ninth == b"" and endpoint.stats.results["busy"] == 1
    with trio.fail_after(5):
        for stream in idle:  # closed by the endpoint after REQUEST_TIMEOUT, unanswered
            assert await stream.receive_some(100) == b""
            await stream.aclose()
    assert endpoint.stats.results["timeout"] == 8 and endpoint.stats.active == 0
    lines, body = head_and_body(await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n"))
    assert lines[0] == "HTTP/1.1 200 OK"
    assert b'tunneld_metrics_requests_total{result="timeout"} 8.0' in body
    assert b'tunneld_metrics_requests_total{result="busy"} 1.0' in body


async def test_a_collector_bug_answers_500_and_the_endpoint_goes_on(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Collector) -> Iterator[Any]:
        raise RuntimeError("bug")
        yield  # pragma: no cover

    monkeypatch.setattr(Collector, "collect", broken)
    lines, _ = head_and_body(await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n"))
    assert lines[0] == "HTTP/1.1 500 Internal Server Error"
    monkeypatch.undo()
    lines, _ = head_and_body(await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n"))
    assert lines[0] == "HTTP/1.1 200 OK"


def test_an_address_in_use_is_an_error_naming_the_metrics_listen() -> None:
    first = Endpoint.open("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=r"\[metrics\] listen 127.0.0.1:\d+: Address already"):
            Endpoint.open("127.0.0.1", first.port)
    finally:
        first.close()
