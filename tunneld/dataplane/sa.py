"""One ESP Security Association per direction: key, counters, replay window.

Outbound (:class:`OutboundSA`): take the next sequence number (it never wraps:
RFC 4303 §3.3.3), seal with IV = sequence number (RFC 4106 §3.1), count.
Inbound (:class:`InboundSA`): parse SPI/seq -> replay check (no mutation) ->
AEAD open -> replay update -> trailer check -> count. The AEAD is the Child
SA's negotiated ``encr`` (AES-GCM-16 or ChaCha20-Poly1305, :mod:`esp`).

Counters: ``packets``/``bytes`` count the packets an SA sealed or delivered
and their inner (plaintext payload) bytes, which is what the soft and hard
lifetimes of the rekeying code compare against. ``drops`` counts every packet
the SA refused, by :class:`DropReason`. Key and salt never appear in a repr,
an exception or a snapshot.
"""

from __future__ import annotations

from tunneld.dataplane import esp as _esp
from tunneld.dataplane.drops import DropReason, EspDrop, zero_counters
from tunneld.dataplane.esp import Buffer
from tunneld.dataplane.replay import DEFAULT_WINDOW, ReplayWindow

__all__ = ["DropReason", "EspDrop", "InboundSA", "OutboundSA"]

_SPI_MAX = 0xFFFFFFFF
_HEADER_PACK = _esp.HEADER.pack
_SPI_SEQ_PACK = _esp.SPI_SEQ.pack
_ESN_AAD_PACK = _esp.ESN_AAD.pack
_TRAILER = _esp.trailer
_SEQ32_MAX = _esp.SEQ32_MAX


def _check_spi(spi: int) -> None:
    # SPI 0 is reserved for local use and MUST NOT be sent (RFC 4303 §2.1);
    # on UDP port 4500 it would also read as the non-ESP marker (RFC 3948 §2.2).
    if not 0 < spi <= _SPI_MAX:
        raise ValueError(f"SPI must be 1..0xffffffff, not {spi:#x}")


class OutboundSA:
    """Seals inner packets for one peer; see the module docstring."""

    __slots__ = (
        "_aead",
        "_esn",
        "_max_seq",
        "_next_seq",
        "_salt",
        "bytes",
        "drops",
        "packets",
        "spi",
    )

    def __init__(
        self,
        spi: int,
        key: bytes,
        salt: bytes,
        *,
        esn: bool = False,
        initial_seq: int = 1,
        encr: int = _esp.ENCR_AES_GCM_16,
    ) -> None:
        _check_spi(spi)
        self._aead = _esp.new_aead(key, salt, encr)
        self._salt = bytes(salt)
        self.spi = spi
        self._esn = esn
        self._max_seq = _esp.SEQ64_MAX if esn else _SEQ32_MAX
        if not 1 <= initial_seq <= self._max_seq + 1:
            raise ValueError(f"initial_seq must be 1..{self._max_seq + 1}, not {initial_seq}")
        self._next_seq = initial_seq
        self.packets = 0
        self.bytes = 0
        self.drops = zero_counters()

    @property
    def esn(self) -> bool:
        return self._esn

    @property
    def seq(self) -> int:
        """The last sequence number sent (``initial_seq - 1`` before the first packet)."""
        return self._next_seq - 1

    @property
    def exhausted(self) -> bool:
        """True once no sequence number is left: the SA must be replaced."""
        return self._next_seq > self._max_seq

    def encrypt(self, inner: Buffer, next_header: int) -> bytes:
        """Return the ESP packet (SPI .. ICV) carrying ``inner``.

        Raises ``EspDrop(SEQ_EXHAUSTED)`` once the counter would pass 2**32 - 1
        (2**64 - 1 with ESN); ValueError for a next header outside 0..255.
        """
        seq = self._next_seq
        if seq > self._max_seq:
            self.drops[DropReason.SEQ_EXHAUSTED] += 1
            raise EspDrop(DropReason.SEQ_EXHAUSTED)
        if not 0 <= next_header <= 255:
            raise ValueError(f"next header must be 0..255, not {next_header}")
        self._next_seq = seq + 1
        size = len(inner)
        # One pack for SPI | seq-low | IV (= seq, RFC 4106 §3.1).
        header = _HEADER_PACK(self.spi, seq & _SEQ32_MAX, seq)
        if self._esn:
            associated = _ESN_AAD_PACK(self.spi, seq >> 32, seq & _SEQ32_MAX)
        else:
            associated = header[:8]
        plaintext = b"".join((inner, _TRAILER(size, next_header)))
        ciphertext = self._aead.encrypt(self._salt + header[8:], plaintext, associated)
        self.packets += 1
        self.bytes += size
        return header + ciphertext

    def snapshot(self) -> dict[str, object]:
        """Plain-data status (SPI in hex, counters; never key material)."""
        return {
            "spi": f"{self.spi:08x}",
            "esn": self._esn,
            "seq": self.seq,
            "packets": self.packets,
            "bytes": self.bytes,
            "exhausted": self.exhausted,
            "drops": {reason.value: n for reason, n in self.drops.items()},
        }

    def __repr__(self) -> str:
        return (
            f"OutboundSA(spi={self.spi:08x}, esn={self._esn}, seq={self.seq}, "
            f"packets={self.packets}, key=<redacted>)"
        )


class InboundSA:
    """Opens ESP packets for one SPI; see the module docstring."""

    __slots__ = ("_aead", "_esn", "_salt", "_window", "bytes", "drops", "packets", "spi")

    def __init__(
        self,
        spi: int,
        key: bytes,
        salt: bytes,
        *,
        esn: bool = False,
        replay_window: int = DEFAULT_WINDOW,
        encr: int = _esp.ENCR_AES_GCM_16,
    ) -> None:
        _check_spi(spi)
        self._aead = _esp.new_aead(key, salt, encr)
        self._salt = bytes(salt)
        self.spi = spi
        self._esn = esn
        self._window = ReplayWindow(replay_window, esn=esn)
        self.packets = 0
        self.bytes = 0
        self.drops = zero_counters()

    @property
    def esn(self) -> bool:
        return self._esn

    @property
    def window(self) -> ReplayWindow:
        """The replay window (read it; only :meth:`decrypt` changes it)."""
        return self._window

    def decrypt(self, esp: Buffer) -> tuple[int, bytes]:
        """Return ``(next_header, inner)`` for one ESP packet, or raise EspDrop.

        Drops: MALFORMED (too short, bad trailer), UNKNOWN_SPI (not this SA's
        SPI), REPLAY, AUTH_FAILED, DUMMY (next header 59, authentic). Each
        drop is counted in ``drops`` before it propagates.
        """
        try:
            spi, seq_low = _esp.parse_header(esp)
            if spi != self.spi:
                raise EspDrop(DropReason.UNKNOWN_SPI)
            window = self._window
            seq = window.check(seq_low)  # before AES-GCM: cheap, mutates nothing
            if self._esn:
                associated: Buffer = _ESN_AAD_PACK(spi, seq >> 32, seq_low)
            else:
                associated = esp[:8]
            plaintext = _esp.open_ciphertext(self._aead, self._salt, esp, associated)
            window.update(seq)  # only now: the ICV verified (RFC 4303 §3.4.3)
            next_header, size = _esp.split_trailer(plaintext)
            if next_header == _esp.NEXT_HEADER_NONE:
                raise EspDrop(DropReason.DUMMY)  # RFC 4303 §2.6: discard silently
        except EspDrop as drop:
            self.drops[drop.reason] += 1
            raise
        self.packets += 1
        self.bytes += size
        return next_header, plaintext[:size]

    def snapshot(self) -> dict[str, object]:
        """Plain-data status (SPI in hex, counters, window; never key material)."""
        return {
            "spi": f"{self.spi:08x}",
            "esn": self._esn,
            "packets": self.packets,
            "bytes": self.bytes,
            "replay_window": self._window.size,
            "highest_seq": self._window.top,
            "drops": {reason.value: n for reason, n in self.drops.items()},
        }

    def __repr__(self) -> str:
        return (
            f"InboundSA(spi={self.spi:08x}, esn={self._esn}, "
            f"highest_seq={self._window.top}, packets={self.packets}, key=<redacted>)"
        )
