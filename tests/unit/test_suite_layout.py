"""The test suite's own layout (issue 8, one test-helper layer).

- No module under tests/ imports a test module (``test_*``): what more than
  one module needs lives in tests/helpers/.
- IP headers are packed in one place, tests/helpers/packets.py: no
  ``struct`` format of an IPv4 (or IPv6) header anywhere else under tests/.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PACKETS = TESTS / "helpers" / "packets.py"
# version/IHL, TOS, total length, id, fragment, TTL, protocol, checksum, addresses;
# IPv6: version/class/flow, payload length, next header, hop limit, addresses
IP_HEADER_FORMAT = re.compile(r"BBHHHBBH|IHBB16s16s")
STRUCT_CALLS = {"pack", "pack_into", "Struct", "calcsize"}


def python_files() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every module an import statement names, including the
    ``from package import module`` form (each imported name is a candidate)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def test_no_module_imports_a_test_module() -> None:
    offenders = []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        for line, name in imported_modules(tree):
            if any(part.startswith("test_") for part in name.split(".")):
                offenders.append(f"{path.relative_to(TESTS.parent)}:{line}: imports {name}")
    assert offenders == [], "move what is shared to tests/helpers/:\n" + "\n".join(offenders)


def struct_formats(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, format) of every struct call whose format is a string literal."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0]
        literal = isinstance(first, ast.Constant) and isinstance(first.value, str | bytes)
        if name in STRUCT_CALLS and literal:
            value = first.value  # type: ignore[attr-defined]
            yield node.lineno, value if isinstance(value, str) else value.decode()


def test_ip_headers_are_packed_only_in_helpers_packets() -> None:
    offenders = []
    for path in python_files():
        if path == PACKETS:
            continue
        for line, fmt in struct_formats(ast.parse(path.read_text(), str(path))):
            if IP_HEADER_FORMAT.search(fmt.replace(" ", "")):
                offenders.append(f"{path.relative_to(TESTS.parent)}:{line}: {fmt!r}")
    assert offenders == [], "use tests/helpers/packets.py:\n" + "\n".join(offenders)


def test_the_checks_see_what_they_look_for() -> None:
    """The checks are not vacuous: they find the examples they exist to catch."""
    sample = ast.parse(
        "from tests.daemon.test_daemon_memory import pair\n"
        "from tests.daemon import test_peer_restart\n"
        "import test_esp\n"
        "header = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20, 0, 0, 64, 17, 0, a, b)\n"
        "V6 = Struct('>IHBB16s16s')\n"
    )
    flagged = {
        line
        for line, name in imported_modules(sample)
        if any(part.startswith("test_") for part in name.split("."))
    }
    assert flagged == {1, 2, 3}

    formats = [fmt for _, fmt in struct_formats(sample)]
    assert [bool(IP_HEADER_FORMAT.search(f)) for f in formats] == [True, True]
    packets_formats = [fmt for _, fmt in struct_formats(ast.parse(PACKETS.read_text()))]
    assert any(IP_HEADER_FORMAT.search(f) for f in packets_formats)
