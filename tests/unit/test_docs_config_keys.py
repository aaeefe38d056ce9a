"""docs/configuration.md documents every key the configuration loader accepts:
each ``_*_KEYS`` table of tunneld/config.py (the keys a Section allows) has every
key written as code (`` `key` ``) in the reference, so a new key cannot ship
undocumented."""

from __future__ import annotations

from pathlib import Path

import tunneld.config as config

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def allowed_keys() -> dict[str, tuple[str, ...]]:
    tables = {
        name: value
        for name, value in vars(config).items()
        if name.startswith("_") and name.endswith("_KEYS") and isinstance(value, tuple)
    }
    assert {"_GATEWAY_KEYS", "_PEER_KEYS", "_CHILD_KEYS"} <= set(tables), sorted(tables)
    return tables


def test_every_accepted_key_is_documented() -> None:
    text = REFERENCE.read_text()
    missing = sorted(
        f"{table}: {key}"
        for table, keys in allowed_keys().items()
        for key in keys
        if not any(form in text for form in (f"`{key}`", f"`{key} =", f"[{key}]", f".{key}]]"))
    )
    assert not missing, f"docs/configuration.md does not document: {missing}"
