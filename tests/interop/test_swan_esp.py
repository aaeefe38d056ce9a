"""tunneld against strongSwan: Extended Sequence Numbers as strongSwan proposes them.

ESN is a transform of its own (RFC 7296 §3.3.2, type 5; RFC 4303 §2.2.1):
an ESP proposal may allow ESN, no ESN, or both, and the responder picks one.
kernel-libipsec in strongSwan 5.9.8 cannot install an ESN SA ("IPsec SA: ESN
not supported"), so against this peer a Child SA works only without ESN:

- charon proposing ``aes256gcm16-esn-noesn`` (both): tunneld, configured
  ``aes256gcm16`` (no ESN) or ``aes256gcm16-noesn-esn`` (both, no ESN
  first), chooses NO_ESN; the SA installs on both sides and carries traffic.
- charon proposing both while tunneld is configured to prefer ESN
  (``aes256gcm16-esn-noesn``; tunneld's default prefers no ESN since this
  finding): tunneld rightly chooses ESN and installs it;
  charon cannot, deletes the Child SA and keeps the IKE SA. Pinned as the
  documented limitation.
- ESN only on both sides, tunneld initiating: charon selects ESN, fails to
  install it and answers IKE_AUTH with NO_PROPOSAL_CHOSEN; tunneld reports
  that as its peer's last error. Pinned too.

tunneld's own ESN data plane is tested against itself (tests/unit,
tests/daemon) and against scapy, not here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers.pairing import Pair, Setup, assert_agree, check_traffic, wait_until
from tests.helpers.sitelab import SITE_B_HOST

pytestmark = [pytest.mark.interop, pytest.mark.netns]

LIBIPSEC_NO_ESN = "IPsec SA: ESN not supported"


@pytest.mark.parametrize("tunneld_esp", ["aes256gcm16", "aes256gcm16-noesn-esn"])
def test_strongswan_offers_esn_and_no_esn_and_tunneld_picks_no_esn(
    tunneld_esp: str,
    swan_pair: Callable[..., Pair],
) -> None:
    setup = Setup("swanctl", tunneld_esp=(tunneld_esp,), swan={"esn": "both"})
    pair = swan_pair(setup)
    log = pair.swan.log_text()
    assert "configured proposals: ESP:AES_GCM_16_256/EXT_SEQ/NO_EXT_SEQ" in log
    assert "selected proposal: ESP:AES_GCM_16_256/NO_EXT_SEQ" in log
    check_traffic(pair)
    child, swan_child = assert_agree(pair, counters=True)
    assert child["esn"] is False and "esn" not in swan_child  # vici names ESN only when on
    assert LIBIPSEC_NO_ESN not in pair.swan.log_text()


def test_limitation_tunneld_preferring_esn_leaves_libipsec_without_a_child_sa(
    swan_pair: Callable[..., Pair],
) -> None:
    setup = Setup("swanctl", tunneld_esp=("aes256gcm16-esn-noesn",), swan={"esn": "both"})
    pair = swan_pair(setup, wait=False)
    out = pair.swan.swanctl("--initiate", "--child", "net", "--timeout", "5", check=False)
    assert out.returncode != 0 and "establishing CHILD_SA 'net' failed" in out.stderr
    assert LIBIPSEC_NO_ESN in out.stdout and "sending DELETE for ESP CHILD_SA" in out.stdout
    # tunneld chose ESN, installed it, and removed it again on charon's DELETE.
    assert "alg=aes256gcm16-esn " in pair.tunneld_log()
    wait_until(lambda: pair.peer()["child_sas"] == [], 5, "tunneld's Child SA deleted")
    peer = pair.peer()
    assert peer["state"] == "established" and peer["counters"]["child_sas_installed"] == 1
    (sa,) = pair.swan.list_sas_raw()
    assert sa["state"] == "ESTABLISHED" and not sa.get("child-sas")  # "keeping IKE_SA"
    assert pair.lab.ping("a", SITE_B_HOST, count=1, timeout=0.3) == 0


def test_limitation_esn_only_is_refused_by_a_libipsec_responder(
    swan_pair: Callable[..., Pair],
) -> None:
    setup = Setup("tunneld", tunneld_esp=("aes256gcm16-esn",), swan={"esn": "yes"})
    pair = swan_pair(setup, wait=False)
    wait_until(lambda: pair.peer()["last_error"] is not None, 10, "tunneld's last_error")
    log = pair.swan.log_text()
    assert "selected proposal: ESP:AES_GCM_16_256/EXT_SEQ" in log and LIBIPSEC_NO_ESN in log
    assert "generating IKE_AUTH response 1 [ IDr CERT AUTH N(NO_PROP) ]" in log
    peer = pair.peer()
    assert "NO_PROPOSAL_CHOSEN" in peer["last_error"]
    assert peer["child_sas"] == [] and peer["counters"]["child_sas_installed"] == 0
    assert pair.lab.ping("a", SITE_B_HOST, count=1, timeout=0.3) == 0
