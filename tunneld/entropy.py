"""The production entropy provider: the only place tunneld reads the OS RNG."""

from __future__ import annotations

import os


class SystemEntropy:
    """Random bytes from the kernel CSPRNG (``getrandom(2)`` via ``os.urandom``)."""

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def __repr__(self) -> str:
        return "SystemEntropy()"
