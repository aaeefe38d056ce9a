"""The parser for `swanctl --list-sas --pretty` (no root needed)."""

from __future__ import annotations

import pytest

from tests.helpers.swan import parse_vici_pretty

# Shape as printed by swanctl 5.9.8, with a DN identity (spaces and '=' in a value).
LIST_SAS = """\
list-sa event {
  gw {
    uniqueid = 3
    state = ESTABLISHED
    local-id = C=CH, O=tunneld, CN=gw-a.example.org
    remote-id = gw-b.example.org
    child-sas {
      net-4 {
        name = net
        spi-in = c1f00a2b
        spi-out = 0badf00d
        local-ts = [
          198.51.100.0/24
          2001:db8:a::/48
        ]
        remote-ts = [
        ]
      }
    }
  }
}
list-sas reply {
}
"""


def test_parse_list_sas_pretty() -> None:
    messages = parse_vici_pretty(LIST_SAS)
    assert [name for name, _ in messages] == ["list-sa event", "list-sas reply"]
    event = messages[0][1]
    assert isinstance(event, dict)
    sa = event["gw"]
    assert sa["local-id"] == "C=CH, O=tunneld, CN=gw-a.example.org"
    child = sa["child-sas"]["net-4"]
    assert (child["spi-in"], child["spi-out"]) == ("c1f00a2b", "0badf00d")
    assert child["local-ts"] == ["198.51.100.0/24", "2001:db8:a::/48"]
    assert child["remote-ts"] == []
    assert messages[1][1] == {}


@pytest.mark.parametrize(
    "text",
    [
        "list-sa event {\n  gw {\n    state = UP\n",
        "gw = 1\n",
        "x {\n  what is this\n}\n",
        "x {\n  l = [\n",
    ],
)
def test_parse_rejects_truncated_or_garbled_output(text: str) -> None:
    with pytest.raises(ValueError):
        parse_vici_pretty(text)
