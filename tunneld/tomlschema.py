"""Typed, path-aware reading of TOML tables for the configuration file.

A :class:`Section` wraps one table with the keys it may hold: unknown keys
are errors suggesting the nearest known one, and every getter checks the
value's type and range. Every error is a :class:`ConfigError` naming the
file, the key path (``peer[0].remote_subnets[1]``) and the reason. Value
parsers (durations, sizes, networks, addresses) raise ``ValueError`` with a
reason; the section adds the file and key path.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem: ``file``, ``key`` path (may be empty) and ``reason``."""

    def __init__(self, file: Path | str, key: str, reason: str) -> None:
        self.file = Path(file)
        self.key = key
        self.reason = reason
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")


# --- value parsers (ValueError with a reason; the section adds the key path) --

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"(\d+)\s*((?:[kmgt]i?)?b)?", re.IGNORECASE)
_SIZE_UNITS: dict[str, int] = {"b": 1} | {
    f"{p}{s}": base**n
    for n, p in enumerate("kmgt", start=1)
    for s, base in (("b", 1000), ("ib", 1024))
}


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"5m"``, ``"4h"``, ``"1d"`` (or a float)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.fullmatch(value.strip())
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
        raise ValueError(f'\'{value}\' is not a duration (examples: 90, "90s", "5m", "4h", "1d")')
    raise ValueError(
        f'expected a duration (integer seconds or a string like "4h"), got {kind_of(value)}'
    )


def parse_size(value: object) -> int:
    """Bytes from ``1048576``, ``"64GiB"``, ``"500MB"`` (KB/MB/GB/TB decimal, KiB.. binary)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value.strip())
        if m:
            return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
        raise ValueError(f'\'{value}\' is not a size (examples: 1073741824, "64GiB", "500MB")')
    raise ValueError(
        f'expected a size (integer bytes or a string like "64GiB"), got {kind_of(value)}'
    )


def parse_network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"'{text}' has host bits set (did you mean '{fixed}'?)") from None
        raise ValueError(f"'{text}' is not an IPv4/IPv6 network in CIDR notation") from None


def parse_address(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"'{text}' is not an IPv4/IPv6 address") from None


def kind_of(value: object) -> str:
    kinds = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }
    return kinds.get(type(value), "date/time")


def _suggest(word: str, known: Sequence[str]) -> str:
    near = difflib.get_close_matches(word, known, n=1, cutoff=0.5)
    return f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(known)}"


# --- reading one table -------------------------------------------------------

_REQUIRED = object()


class Section:
    """One TOML table with a known set of keys; every getter checks type and range."""

    def __init__(self, file: Path, prefix: str, data: object, known: Sequence[str]) -> None:
        self.file, self.prefix, self.known = file, prefix, known
        if not isinstance(data, dict):
            raise ConfigError(file, prefix, f"expected a table, got {kind_of(data)}")
        self.data: dict[str, object] = data
        for key in data:
            if key not in known:
                raise self.error(key, "unknown key" + _suggest(key, known))

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.file, self.path(key), reason)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: object = _REQUIRED) -> object:
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise self.error(key, "required key is missing")
        return default

    def typed(self, key: str, kind: type[T], default: object = _REQUIRED) -> T:
        value = self.raw(key, default)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.error(key, f"expected {_KIND_NAMES[kind]}, got {kind_of(value)}")
        return value

    def string(self, key: str, default: object = _REQUIRED) -> str:
        value = self.typed(key, str, default)
        if not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        return self.ranged(key, self.typed(key, int, default), lo, hi)

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self.raw(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.error(key, f"expected a number, got {kind_of(value)}")
        return self.ranged(key, float(value), lo, hi)

    def ranged(self, key: str, value: T, lo: object, hi: object, unit: str = "") -> T:
        if not lo <= value <= hi:  # type: ignore[operator]
            shown = f"{_show(value)}{unit} is out of range ({_show(lo)}{unit} .. {_show(hi)}{unit})"
            raise self.error(key, shown)
        return value

    def choice(self, key: str, options: Sequence[str], default: str) -> str:
        value = self.typed(key, str, default)
        if value not in options:
            raise self.error(key, f"'{value}' is not one of: {', '.join(options)}")
        return value

    def convert(self, key: str, fn: Callable[[object], T], default: object = _REQUIRED) -> T:
        try:
            return fn(self.raw(key, default))
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def items(
        self, key: str, fn: Callable[[str], T], default: object = _REQUIRED, *, single: bool = False
    ) -> tuple[T, ...]:
        """An array of strings, each converted; ``single`` also takes one bare string."""
        value = self.raw(key, default)
        if single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise self.error(key, f"expected an array of strings, got {kind_of(value)}")
        if not value:
            raise self.error(key, "must not be empty")
        out = []
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            if not isinstance(item, str):
                raise self.error(where, f"expected a string, got {kind_of(item)}")
            try:
                out.append(fn(item))
            except ValueError as exc:
                raise self.error(where, str(exc)) from None
        return tuple(out)

    def file_path(self, key: str, base: Path) -> Path | None:
        if not self.has(key):
            return None
        return resolve(base, self.string(key))


_KIND_NAMES: dict[type, str] = {str: "a string", int: "an integer", bool: "a boolean (true/false)"}


def _show(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def resolve(base: Path, text: str) -> Path:
    """A path from the file: absolute as written, relative to the file's directory otherwise."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path
