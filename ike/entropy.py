"""Randomness, injected (rule 1 of :mod:`ike`).

Production code passes :class:`tunneld.entropy.SystemEntropy`; tests pass
:class:`DeterministicEntropy` so that nonces, SPIs and DH keys (and therefore
rekey-collision winners) are reproducible.
"""

from __future__ import annotations

import hashlib
from typing import Protocol


class Entropy(Protocol):
    """A source of random bytes. The only randomness the core ever sees."""

    def random_bytes(self, n: int) -> bytes: ...


class DeterministicEntropy:
    """SHAKE-256 keystream from a seed: reproducible, *not* for production."""

    def __init__(self, seed: bytes | str | int = 0) -> None:
        if isinstance(seed, int):
            seed = seed.to_bytes(16, "big", signed=True)
        elif isinstance(seed, str):
            seed = seed.encode()
        self._seed = seed
        self._counter = 0

    def random_bytes(self, n: int) -> bytes:
        block = hashlib.shake_256(self._seed + self._counter.to_bytes(8, "big")).digest(n)
        self._counter += 1
        return block

    def __repr__(self) -> str:
        return "DeterministicEntropy(<seeded>)"
