"""A peer ``address`` that is a DNS name, through two real daemons (issue #10).

Both gateways start (``auto = "start"``) and name each other by DNS name only;
each gateway namespace gets an ``/etc/hosts`` of its own
(tests/helpers/moving.py: ``/etc/netns/NS/hosts``, which ``ip netns exec``
mounts over ``/etc/hosts`` for the daemon alone). The tunnel comes up,
carries 1 ms probes without loss, and ``tunneld status`` shows the name and
what it resolved to.
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
        assert f"remote gw-b.example.org:500 ({GWB_UNDERLAY})" in text
        assert_probes_clean(sites.probe(2000, rate=1000), 2000)
