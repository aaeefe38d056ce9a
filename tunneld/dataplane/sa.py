"""One ESP Security Association per direction: key, counters, replay window.

Outbound (:class:`OutboundSA`): take the next sequence number (it never wraps:
RFC 4303 §3.3.3), seal with IV = sequence number (RFC 4106 §3.1), count.
Inbound (:class:`InboundSA`): parse SPI/seq -> replay check (no mutation) ->
AEAD open -> replay update -> trailer check -> count. The AEAD is the Child
SA's negotiated ``encr`` (AES-GCM-16 or ChaCha20-Poly1305, :mod:`esp`).

The packet pumps use the zero-copy pair :meth:`OutboundSA.seal_into` /
:meth:`InboundSA.open_into`, which encrypt from a staging buffer straight into
a GSO send buffer and decrypt straight into the buffer the TUN writes from;
``encrypt``/``decrypt`` (bytes in, bytes out) are thin wrappers around them,
so there is one implementation of the packet format.

Counters: ``packets``/``bytes`` count the packets an SA sealed or delivered
and their inner (plaintext payload) bytes, which is what the soft and hard
lifetimes of the rekeying code compare against. ``drops`` counts every packet
the SA refused, by :class:`DropReason`. Key and salt never appear in a repr,
an exception or a snapshot.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidTag

from tunneld.dataplane import esp as _esp
from tunneld.dataplane.drops import DropReason, EspDrop, zero_counters
from tunneld.dataplane.esp import Buffer
from tunneld.dataplane.replay import DEFAULT_WINDOW, ReplayWindow
from tunneld.dataplane.selectors import InboundPolicy, Key

__all__ = ["DropReason", "EspDrop", "InboundSA", "OutboundSA"]

_SPI_MAX = 0xFFFFFFFF
_HEADER_PACK_INTO = _esp.HEADER.pack_into
_SPI_SEQ_UNPACK = _esp.SPI_SEQ.unpack_from
_ESN_AAD_PACK = _esp.ESN_AAD.pack
_NONCE_PACK = struct.Struct(">4sQ").pack  # salt || IV, IV = the 64-bit sequence number
_TRAILERS = _esp.TRAILERS
_PADDINGS = _esp.PADDINGS
_SEQ32_MAX = _esp.SEQ32_MAX
_MIN_ESP_LEN = _esp.MIN_ESP_LEN
_HEAD = _esp.ESP_HEADER_LEN + _esp.IV_LEN  # SPI, seq, IV: 16 bytes before the ciphertext
_FRAME = _HEAD + _esp.ICV_LEN  # what ESP adds besides the trailer
_NEXT_HEADER_NONE = _esp.NEXT_HEADER_NONE
_NEXT_HEADER_IPV4 = _esp.NEXT_HEADER_IPV4
_NEXT_HEADER_IPV6 = _esp.NEXT_HEADER_IPV6
_U64 = struct.Struct(">Q").unpack_from  # IPv4 source || destination: the policy key


def _check_spi(spi: int) -> None:
    # SPI 0 is reserved for local use and MUST NOT be sent (RFC 4303 §2.1);
    # on UDP port 4500 it would also read as the non-ESP marker (RFC 3948 §2.2).
    if not 0 < spi <= _SPI_MAX:
        raise ValueError(f"SPI must be 1..0xffffffff, not {spi:#x}")


class OutboundSA:
    """Seals inner packets for one peer; see the module docstring."""

    __slots__ = (
        "_aead",
        "_encrypt_into",
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
        self._encrypt_into = self._aead.encrypt_into
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
        size = len(inner)
        plain = bytearray(size + _esp.TRAILER_MAX)
        plain[:size] = inner
        out = bytearray(_esp.sealed_len(size))
        self.seal_into(memoryview(plain), 0, size, next_header, memoryview(out), 0)
        return bytes(out)

    @property
    def remaining(self) -> int:
        """How many packets this SA can still seal."""
        return self._max_seq + 1 - self._next_seq

    def seal_into(
        self,
        plain: memoryview,
        start: int,
        size: int,
        next_header: int,
        out: memoryview,
        offset: int,
    ) -> int:
        """Seal the inner packet ``plain[start : start + size]`` as one ESP packet
        at ``out[offset:]``; returns its length, ``esp.sealed_len(size)``.

        ``plain`` is a writable staging buffer: the trailer (padding, pad length,
        next header) is written right after the packet, so it needs
        ``esp.TRAILER_MAX`` bytes of room there; AES-GCM then reads it and writes
        the ciphertext straight into ``out`` (which must not overlap ``plain``).
        Raises like :meth:`encrypt`; ValueError if a buffer is too small.
        """
        if not self.seal_batch(plain, ((start, size, next_header, offset),), out):
            self.drops[DropReason.SEQ_EXHAUSTED] += 1
            raise EspDrop(DropReason.SEQ_EXHAUSTED)
        return _esp.sealed_len(size)

    def seal_batch(
        self, plain: memoryview, items: Iterable[tuple[int, int, int, int]], out: memoryview
    ) -> int:
        """Seal ``(start, size, next_header, offset)`` items as :meth:`seal_into`
        does, in order; returns how many were sealed (fewer only once the
        sequence numbers run out: see :attr:`remaining`). The hot path: one
        call per batch, the SA's state bound to locals.
        """
        spi, salt, esn, encrypt_into = self.spi, self._salt, self._esn, self._encrypt_into
        seq, limit = self._next_seq, self._max_seq
        sealed = inner_bytes = 0
        try:
            for start, size, next_header, offset in items:
                if seq > limit:
                    break
                if not 0 <= next_header <= 255:
                    raise ValueError(f"next header must be 0..255, not {next_header}")
                number, seq = seq, seq + 1  # consumed before use: never sealed twice
                length = size + 2 + (-(size + 2) & 3)  # payload | padding | pad len | next hdr
                end = start + length
                plain[start + size : end] = _TRAILERS[next_header][length - size - 2]
                low = number & _SEQ32_MAX
                _HEADER_PACK_INTO(out, offset, spi, low, number)  # IV = seq (RFC 4106 §3.1)
                if esn:
                    associated: Buffer = _ESN_AAD_PACK(spi, number >> 32, low)
                else:
                    associated = out[offset : offset + 8]
                encrypt_into(
                    _NONCE_PACK(salt, number),
                    plain[start:end],
                    associated,
                    out[offset + _HEAD : offset + _FRAME + length],
                )
                sealed += 1
                inner_bytes += size
        finally:
            self._next_seq = seq
            self.packets += sealed
            self.bytes += inner_bytes
        return sealed

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


def _policy_key(next_header: int, out: memoryview, start: int, stop: int) -> Key:
    """The policy key of the inner packet ``out[start:stop]`` (selectors module);
    MALFORMED unless it is IPv4/IPv6 as its next header says (RFC 4303 §2.6)."""
    version = out[start] >> 4 if stop > start else 0
    if next_header == _NEXT_HEADER_IPV4 and version == 4 and stop - start >= 20:
        key: Key = _U64(out, start + 12)[0]  # RFC 791: source, destination at 12..20
        return key
    if next_header == _NEXT_HEADER_IPV6 and version == 6 and stop - start >= 40:
        return bytes(out[start + 8 : start + 40])  # RFC 8200: addresses at 8..40
    raise EspDrop(DropReason.MALFORMED)


class InboundSA:
    """Opens ESP packets for one SPI; see the module docstring."""

    __slots__ = (
        "_aead",
        "_decrypt_into",
        "_esn",
        "_salt",
        "_window",
        "bytes",
        "drops",
        "newest",
        "packets",
        "policy",
        "spi",
    )

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
        self._decrypt_into = self._aead.decrypt_into
        self._salt = bytes(salt)
        self.spi = spi
        self._esn = esn
        self._window = ReplayWindow(replay_window, esn=esn)
        # Set by the SADatabase when the SA joins a tunnel: the selectors every
        # packet the SA delivers must match (RFC 4301 §5.2). None: no check.
        self.policy: InboundPolicy | None = None
        self.packets = 0
        self.bytes = 0
        self.drops = zero_counters()
        # The index (in the last open_batch call's ``packets``) of the last packet
        # that raised the window's top: authentic (ICV verified), not a replay and
        # the newest so far (RFC 7296 §2.23's rule for IKE, applied to ESP). -1: none.
        # The SA database reads it to follow a peer's new address.
        self.newest = -1

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
        SPI), REPLAY, AUTH_FAILED, DUMMY (next header 59, authentic), and with
        a ``policy`` MALFORMED (next header and IP version disagree) and
        NO_POLICY. Each drop is counted in ``drops`` before it propagates.
        """
        out = bytearray(max(len(esp) - _FRAME, 0))
        view = memoryview(out)
        next_header, size = self.open_into(esp, view, 0)
        return next_header, bytes(view[:size])

    def open_into(self, esp: Buffer, out: memoryview, offset: int) -> tuple[int, int]:
        """Open one ESP packet into ``out[offset:]``: ``(next_header, inner_len)``.

        ``out`` needs ``len(esp) - 32`` bytes of room there. Drops as :meth:`decrypt`.
        """
        size = len(esp)
        if size < _MIN_ESP_LEN or _SPI_SEQ_UNPACK(esp)[0] != self.spi:
            reason = DropReason.MALFORMED if size < _MIN_ESP_LEN else DropReason.UNKNOWN_SPI
            self.drops[reason] += 1
            raise EspDrop(reason)
        opened: list[memoryview] = []
        dropped: list[DropReason] = []
        self.open_batch((esp,), 0, out, offset, opened, dropped)
        if dropped:
            raise EspDrop(dropped[0]) from None  # no context: the packet stays out of it
        return out[offset + size - _FRAME - 1], len(opened[0])

    def open_batch(
        self,
        packets: Sequence[Buffer],
        first: int,
        out: memoryview,
        offset: int,
        opened: list[memoryview],
        dropped: list[DropReason],
    ) -> tuple[int, int]:
        """Open ``packets[first:]`` while they carry this SA's SPI: the hot path.

        Each inner packet goes to ``out`` at ``offset``, back to back, and its
        view is appended to ``opened``; each refused packet's reason to
        ``dropped`` (and counted in ``drops``). Returns the index of the first
        packet not taken (another SPI, or too short to have one) and the new
        offset. ``out`` needs ``len(esp) - 32`` bytes per packet.

        Per packet, in this order: replay check (no mutation) -> AES-GCM into
        ``out`` -> replay update (only now: the ICV verified, RFC 4303 §3.4.3;
        for a run of consecutive numbers one ``update_run`` when the run
        ends, see rule 6 of the replay module) -> trailer (padding contents,
        RFC 4303 §2.4) -> next header 59 is a dummy (§2.6) -> with a
        ``policy``: next header matches the IP version, source/destination in
        the selectors (RFC 4301 §5.2). After a drop the
        bytes at ``offset`` are meaningless and are overwritten by the next
        packet. Everything the loop needs is bound to locals once per call.
        """
        own, esn, salt, decrypt_into = self.spi, self._esn, self._salt, self._decrypt_into
        window = self._window
        check, update, update_run = window.check, window.update, window.update_run
        # Verified consecutive numbers above the window's top whose update is
        # deferred (replay rule 6): only the run's next number skips check().
        run_first = run_last = -1
        policy = self.policy
        verdicts = policy.verdicts if policy is not None else None
        drops = self.drops
        end, delivered, inner_bytes = offset, 0, 0
        index = first
        newest = -1
        for index in range(first, len(packets)):
            esp = packets[index]
            size = len(esp)
            if size < _esp.ESP_HEADER_LEN:
                break
            spi, seq_low = _SPI_SEQ_UNPACK(esp)
            if spi != own:
                break
            try:
                if size < _MIN_ESP_LEN:
                    raise EspDrop(DropReason.MALFORMED)
                fast = run_last >= 0 and seq_low == (run_last + 1) & _SEQ32_MAX
                if fast:
                    seq = run_last + 1  # above top, never accepted: what check() returns
                else:
                    if run_last >= 0:  # the window must know the run before any check
                        update_run(run_first, run_last)
                        run_first = run_last = -1
                    seq = check(seq_low)  # before AES-GCM: cheap, mutates nothing
                last = end + size - _FRAME - 1  # where the next header byte lands
                if esn:
                    associated: Buffer = _ESN_AAD_PACK(spi, seq >> 32, seq_low)
                else:
                    associated = esp[:8]
                try:
                    decrypt_into(salt + esp[8:_HEAD], esp[_HEAD:], associated, out[end : last + 1])
                except InvalidTag:
                    raise EspDrop(DropReason.AUTH_FAILED) from None
                # only now: the ICV verified (RFC 4303 §3.4.3)
                if fast:
                    run_last = seq
                    newest = index
                elif seq > window.top:
                    run_first = run_last = seq
                    newest = index
                else:
                    update(seq)
                pad = out[last - 1]
                stop = last - 1 - pad  # the end of the inner packet
                if stop < end or (pad and out[stop : last - 1] != _PADDINGS[pad]):
                    raise EspDrop(DropReason.MALFORMED)
                next_header = out[last]
                if next_header == _NEXT_HEADER_NONE:
                    raise EspDrop(DropReason.DUMMY)
                delivered += 1
                inner_bytes += stop - end
                if verdicts is not None:
                    if next_header == _NEXT_HEADER_IPV4 and stop - end >= 20 and out[end] == 0x45:
                        key: Key = _U64(out, end + 12)[0]  # RFC 791: the addresses, 12..20
                    else:  # IPv6, IPv4 with options, or malformed
                        key = _policy_key(next_header, out, end, stop)
                    allowed = verdicts.get(key)
                    if not (allowed or (allowed is None and policy.verdict(key))):  # type: ignore[union-attr]
                        raise EspDrop(DropReason.NO_POLICY)
            except EspDrop as drop:
                drops[drop.reason] += 1
                dropped.append(drop.reason)
                continue
            opened.append(out[end:stop])
            end = stop
        else:
            index = len(packets)
        if run_last >= 0:
            update_run(run_first, run_last)
        self.packets += delivered
        self.bytes += inner_bytes
        self.newest = newest
        return index, end

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
