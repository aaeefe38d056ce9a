"""A peer ``address`` that is a DNS name, and every ``listen`` address bound, through
two real daemons (issue #10).

Both gateways start (``auto = "start"``) and name each other by DNS name only;
each gateway namespace gets an ``/etc/hosts`` of its own
(tests/helpers/moving.py: ``/etc/netns/NS/hosts``, which ``ip netns exec``
mounts over ``/etc/hosts`` for the daemon alone). The tunnel comes up,
carries 1 ms probes without loss, and ``tunneld status`` shows the name and
what it resolved to.

gw-b listens on two addresses and gw-a knows it by the second: IKE answers,
gw-b's own requests and its ESP all leave from that address (gw-a would drop
an IKE_SA_INIT answer from elsewhere, and would log a move for ESP from
elsewhere).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.helpers.lab_sites import Sites, assert_probes_clean
from tests.helpers.moving import hosts_file
from tests.helpers.sitelab import Lab
from tools.lab import GWA_UNDERLAY, GWB_UNDERLAY, SiteOptions

pytestmark = pytest.mark.slow  # ~7 s
NAMES = {"gwa": ("gw-a.example.org", GWA_UNDERLAY), "gwb": ("gw-b.example.org", GWB_UNDERLAY)}


@pytest.fixture
def lab_stem() -> str:
    return "mvdns"


def test_both_sides_start_with_dns_names(
    lab: Lab, make_sites: Callable[[SiteOptions], Sites]
) -> None:
    sites = make_sites(SiteOptions(auto_a="start", auto_b="start"))
    for conf, other in ((sites.conf_a, "gwb"), (sites.conf_b, "gwa")):
        name, address = NAMES[other]
        text = conf.read_text()
        assert f'address = "{address}"' in text
        conf.write_text(text.replace(f'address = "{address}"', f'address = "{name}"'))
    with contextlib.ExitStack() as stack:
        for node, other in (("gwa", "gwb"), ("gwb", "gwa")):
            stack.enter_context(hosts_file(lab, node, dict([NAMES[other]])))
        check = subprocess.run(  # `check` takes the names without resolving them
            [sys.executable, "-m", "tunneld.cli", "check", "-c", str(sites.conf_a)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        sites.start()
        sites.wait_established()
        for gw, other in ((sites.gwa, "gwb"), (sites.gwb, "gwa")):
            name, address = NAMES[other]
            view = sites.peer_status(gw)
            assert view["remote"] == f"{name}:500" and view["resolved"] == address
        text = sites.gwa.cli("status", "-s", str(sites.gwa.socket)).stdout
        assert f"remote {GWB_UNDERLAY}:4500 (gw-b.example.org)" in text
        assert_probes_clean(sites.probe(2000, rate=1000), 2000)


def test_the_peer_talks_to_our_second_listen_address(
    lab: Lab, make_sites: Callable[[SiteOptions], Sites]
) -> None:
    second = "192.0.2.3"
    lab.run("gwb", "ip", "addr", "add", f"{second}/24", "dev", f"{lab.prefix}-gb0")
    sites = make_sites(SiteOptions(log_format="json"))
    text_a, text_b = sites.conf_a.read_text(), sites.conf_b.read_text()
    assert f'address = "{GWB_UNDERLAY}"' in text_a and f'listen = ["{GWB_UNDERLAY}"]' in text_b
    sites.conf_a.write_text(text_a.replace(f'address = "{GWB_UNDERLAY}"', f'address = "{second}"'))
    sites.conf_b.write_text(
        text_b.replace(f'listen = ["{GWB_UNDERLAY}"]', f'listen = ["{GWB_UNDERLAY}", "{second}"]')
    )
    sites.start()
    sites.wait_established()
    assert_probes_clean(sites.probe(2000, rate=1000), 2000)
    view = sites.peer_status(sites.gwa)
    assert view["ike_sas"][0]["remote"] == f"{second}:4500"
    assert view["counters"]["address_changes"] == 0
    assert sites.log_events(sites.gwa, "peer address changed") == []
    udp = sites.gwb.status()["dataplane"]["pumps"]["udp"]
    assert udp[f"{second}:4500"]["recv_datagrams"] > 2000  # the probes came in there
    assert udp[f"{second}:4500"]["sent_datagrams"] > 2000  # and their echoes left from there
    assert udp["4500"]["sent_datagrams"] == 0  # nothing from the first address
