"""docs/interop.md, "Cloud gateways": what the Azure section claims, checked
against tunneld's own proposal matching and configuration loader.

- Azure's default IKEv2 offer (AES-CBC with SHA-1/SHA-256 integrity and
  MODP-1024, built here on the wire from the IANA numbers) gets
  NO_PROPOSAL_CHOSEN from a tunneld responder configured as documented.
- The documented custom policy (GCMAES256 / SHA256 / ECP256, IPsec GCMAES256
  with PFS ECP256) is what that configuration selects, for IKE and ESP.
- The documented tunneld peer configuration loads (`tunneld check`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ike import payloads
from ike.constants import DhGroup, EncrId, IntegId, PrfId, ProtocolId, TransformType
from ike.proposals import (
    NoProposalChosen,
    parse_esp_proposal,
    parse_ike_proposal,
    select_proposal,
)
from tunneld.config import load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "interop.md"
MODP_1024 = 2  # IANA Transform Type 4 ID 2, the group Azure's default IKEv2 policy uses
T = payloads.Transform


def section() -> str:
    text = DOC.read_text()
    start = text.index("## Cloud gateways")
    return text[start : text.index("\n## ", start + 1)]


def documented_config() -> str:
    match = re.search(r"```toml\n(.*?)```", section(), re.S)
    assert match, "the section's tunneld configuration"
    return match.group(1)


def documented(key: str) -> list[str]:
    match = re.search(rf"^{key} = \[(.*?)\]", documented_config(), re.M)
    assert match, key
    return [s.strip().strip('"') for s in match.group(1).split(",") if s.strip()]


def azure_default_ike() -> tuple[payloads.Proposal, ...]:
    """IKEv2 proposals with CBC ciphers, integrity algorithms and group 2."""
    out = []
    for n, bits in enumerate((256, 128), start=1):
        out.append(
            payloads.Proposal(
                n,
                ProtocolId.IKE,
                (
                    T(TransformType.ENCR, EncrId.AES_CBC, bits),
                    T(TransformType.PRF, PrfId.HMAC_SHA2_256),
                    T(TransformType.PRF, PrfId.HMAC_SHA1),
                    T(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
                    T(TransformType.INTEG, IntegId.HMAC_SHA1_96),
                    T(TransformType.DH, MODP_1024),
                ),
            )
        )
    return tuple(out)


def azure_custom_ike() -> tuple[payloads.Proposal, ...]:
    """-IkeEncryption GCMAES256 -IkeIntegrity SHA256 -DhGroup ECP256."""
    return (
        payloads.Proposal(
            1,
            ProtocolId.IKE,
            (
                T(TransformType.ENCR, EncrId.AES_GCM_16, 256),
                T(TransformType.PRF, PrfId.HMAC_SHA2_256),
                T(TransformType.DH, DhGroup.ECP_256),
            ),
        ),
    )


def test_azure_default_policy_is_refused() -> None:
    mine = [parse_ike_proposal(p) for p in documented("ike")]
    with pytest.raises(
        NoProposalChosen,
        match=r"offered: #1 IKE:aes256-prfsha256-prfsha1-sha256-sha1-modp1024, #2 IKE:aes128-",
    ):
        select_proposal(azure_default_ike(), mine, prefer_dh=MODP_1024)


def test_azure_custom_policy_is_selected() -> None:
    mine = [parse_ike_proposal(p) for p in documented("ike")]
    chosen = select_proposal(azure_custom_ike(), mine, prefer_dh=DhGroup.ECP_256)
    assert chosen.number == 1
    esp_mine = [parse_esp_proposal(p) for p in documented("esp")]
    esp_offer = payloads.Proposal(
        1,
        ProtocolId.ESP,
        (
            T(TransformType.ENCR, EncrId.AES_GCM_16, 256),
            T(TransformType.DH, DhGroup.ECP_256),
            T(TransformType.ESN, 0),
        ),
        b"\x01\x02\x03\x04",
    )
    assert select_proposal((esp_offer,), esp_mine).number == 1


@pytest.mark.parametrize("token", ["aes256", "sha1", "modp1024", "modp2048", "3des"])
def test_refused_azure_values_are_refused_in_configuration(token: str) -> None:
    with pytest.raises(ValueError):
        parse_ike_proposal(f"aes256gcm16-prfsha256-{token}" if "modp" in token else token)


def test_documented_peer_configuration_loads(tmp_path: Path) -> None:
    psk = tmp_path / "azure.psk"
    psk.write_text("0x" + "ab" * 32 + "\n")
    psk.chmod(0o600)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        '[gateway]\nname = "site"\nlisten = ["198.51.100.1"]\n'
        f'control_socket = "{tmp_path}/ctl/sock"\n' + documented_config()
    )
    config = load_config(conf)
    (peer,) = config.peers
    assert peer.name == "azure"
