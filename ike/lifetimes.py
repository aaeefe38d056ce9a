"""When an SA is rekeyed, when it dies, and how long to wait before trying again.

Pure arithmetic on ``now`` and the injected entropy; the session keeps the
resulting deadlines and reports the earliest through ``next_deadline()``.

- soft deadline = created + lifetime x (1 - jitter x u), u uniform in [0, 1)
  drawn from the entropy: the rekey starts somewhere in
  [lifetime x (1 - jitter), lifetime] after creation (RFC 7296 §2.8.1 asks for
  jitter so that both peers rarely rekey at the same moment);
- hard deadline = created + lifetime x 1.1 (:data:`ike.policy.HARD_LIFETIME_FACTOR`);
- retry delays are uniform within a (low, high) range of :mod:`ike.policy`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ike.entropy import Entropy
from ike.policy import HARD_LIFETIME_FACTOR

_FRACTION_BYTES = 4  # 32 bits: a resolution of ~1 ms even for a 30-day lifetime


def fraction(entropy: Entropy) -> float:
    """A uniform draw in [0, 1)."""
    value = int.from_bytes(entropy.random_bytes(_FRACTION_BYTES), "big")
    return value / float(1 << (8 * _FRACTION_BYTES))


def random_delay(entropy: Entropy, bounds: tuple[float, float]) -> float:
    """A delay uniform in [low, high) seconds."""
    low, high = bounds
    return low + (high - low) * fraction(entropy)


@dataclass(frozen=True)
class Lifetime:
    """The rekey (soft) and expiry (hard) deadlines of one SA, absolute times."""

    created: float
    rekey_at: float
    expire_at: float

    @classmethod
    def start(cls, now: float, lifetime: float, jitter: float, entropy: Entropy) -> Lifetime:
        soft = lifetime * (1.0 - jitter * fraction(entropy))
        return cls(now, now + soft, now + lifetime * HARD_LIFETIME_FACTOR)
