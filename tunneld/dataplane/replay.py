"""Anti-replay window (RFC 4303 §3.4.3) as a ring of 64-bit words (RFC 6479).

Theory of operation:

1. ``top`` is the highest sequence number that has passed integrity
   verification (0: none yet). The window covers ``top - size + 1 .. top``.
2. The bitmap is a ring of ``n`` 64-bit words; sequence number ``s`` lives in
   word ``(s >> 6) % n``, bit ``s & 63``. Advancing ``top`` zeroes only the
   words it moves into (RFC 6479 §2), never shifts bits, so the cost of a jump
   does not depend on the window size (a jump of ``n`` words or more clears
   the ring).
3. One word of the ring is always partly "ahead" of ``top``, so ``n`` words
   give a guaranteed window of ``(n - 1) * 64`` packets (RFC 6479 §2). A
   requested size is therefore rounded up to a multiple of 64 and one word is
   added: 1024 (the default) gives 17 words and a window of exactly 1024; 100
   gives 3 words and a window of 128. ``size`` reports the effective window.
4. :meth:`ReplayWindow.check` runs *before* decryption and mutates nothing, so
   a forged packet (any sequence number, bad ICV) cannot move the window.
   :meth:`ReplayWindow.update` runs only after the ICV verified; it checks
   again (it is a test-and-set), so check/update can never admit a duplicate.
5. With ESN (RFC 4303 §2.2.1) only the low 32 bits are on the wire; ``check``
   infers the high 32 bits from ``top`` as in RFC 4303 Appendix A2.2 and
   returns the full 64-bit number, which the caller puts in the AAD
   (RFC 4106 §5). A wrong guess simply fails the ICV. The resynchronisation of
   Appendix A3 (after many consecutive ICV failures) is not implemented: with
   a window of 1024 or more a peer would have to lose 2**32 - 1024
   consecutive packets to need it.
6. :meth:`ReplayWindow.update_run` marks a run of consecutive sequence numbers
   above ``top`` in one call, word by word: the same state as one ``update``
   per number (numbers that fall out of the window on the way are not
   marked: ``check`` refuses them anyway). A receiver may defer the updates
   of such a run only while every other packet it checks meanwhile has a
   number above the run's last one (InboundSA.open_batch: the next number of
   the run, nothing else, without a ``check``; anything else flushes the run
   first), so check/update never admit a duplicate.
"""

from __future__ import annotations

from tunneld.dataplane.drops import DropReason, EspDrop

DEFAULT_WINDOW = 1024  # our choice; RFC 4303 §3.4.3 asks for at least 32 (64 recommended)
MAX_WINDOW = 1 << 20  # our cap; ESN needs the window well below 2**31 (RFC 4303 App. A2.2)
_WORD_BITS = 64  # RFC 6479 block size, one Python int per block
_SEQ32_MASK = 0xFFFFFFFF
_SEQ64_MAX = (1 << 64) - 1


class ReplayWindow:
    """Sliding anti-replay window; see the module docstring for the rules."""

    __slots__ = ("_esn", "_nwords", "_size", "_top", "_words")

    def __init__(self, size: int = DEFAULT_WINDOW, *, esn: bool = False) -> None:
        if not 1 <= size <= MAX_WINDOW:
            raise ValueError(f"replay window must be 1..{MAX_WINDOW} packets, not {size}")
        self._nwords = -(-size // _WORD_BITS) + 1
        self._size = (self._nwords - 1) * _WORD_BITS
        self._words = [0] * self._nwords
        self._top = 0
        self._esn = esn

    @property
    def size(self) -> int:
        """Effective window size in packets (the request rounded up, see rule 3)."""
        return self._size

    @property
    def top(self) -> int:
        """Highest authenticated sequence number so far (64-bit with ESN), 0 if none."""
        return self._top

    @property
    def esn(self) -> bool:
        return self._esn

    def check(self, seq_low: int) -> int:
        """Return the full sequence number if a packet may be decrypted, else raise.

        ``seq_low`` is the 32-bit Sequence Number field from the wire. Raises
        ``EspDrop(REPLAY)`` for 0 (never sent, RFC 4303 §3.3.3), duplicates and
        packets left of the window. Mutates nothing.
        """
        seq = self._infer_esn(seq_low) if self._esn else seq_low
        top = self._top
        if seq > top:
            return seq
        if seq == 0 or top - seq >= self._size:
            raise EspDrop(DropReason.REPLAY)
        if (self._words[(seq >> 6) % self._nwords] >> (seq & 63)) & 1:
            raise EspDrop(DropReason.REPLAY)
        return seq

    def update(self, seq: int) -> None:
        """Mark ``seq`` (as returned by :meth:`check`) received; call after the ICV verified.

        Raises ``EspDrop(REPLAY)`` if ``seq`` is no longer acceptable (test-and-set).
        """
        top = self._top
        if seq > top:
            if seq >> 6 != top >> 6:  # entering new words: clear them first
                if seq > _SEQ64_MAX:
                    raise EspDrop(DropReason.REPLAY)
                self._advance(top >> 6, seq >> 6)
            self._top = seq
        elif seq == 0 or top - seq >= self._size:
            raise EspDrop(DropReason.REPLAY)
        words = self._words
        index = (seq >> 6) % self._nwords
        bit = 1 << (seq & 63)
        if words[index] & bit:
            raise EspDrop(DropReason.REPLAY)
        words[index] |= bit

    def update_run(self, first: int, last: int) -> None:
        """Mark ``first .. last`` received, all above ``top`` (rule 6); after their ICVs."""
        top = self._top
        if not top < first <= last or last > _SEQ64_MAX:
            raise ValueError("update_run takes a run of fresh sequence numbers above top")
        words, n = self._words, self._nwords
        if last >> 6 != top >> 6:
            self._advance(top >> 6, last >> 6)
        seq = max(first, ((last >> 6) - n + 1) << 6)  # older words were recycled: skip them
        while seq <= last:
            stop = min(last, seq | 63)  # to the end of this word or of the run
            words[(seq >> 6) % n] |= ((1 << (stop - seq + 1)) - 1) << (seq & 63)
            seq = stop + 1
        self._top = last

    def _advance(self, old_block: int, new_block: int) -> None:
        """Zero the words that ``top`` moves into (RFC 6479 §2)."""
        words = self._words
        n = self._nwords
        if new_block - old_block >= n:
            for i in range(n):
                words[i] = 0
            return
        for block in range(old_block + 1, new_block + 1):
            words[block % n] = 0

    def _infer_esn(self, seq_low: int) -> int:
        """Guess the high 32 bits of an ESN sequence number (RFC 4303 Appendix A2.2)."""
        window = self._size
        top_high = self._top >> 32
        top_low = self._top & _SEQ32_MASK
        if top_low >= window - 1:
            # Case A: the window lies within one 2**32 subspace.
            high = top_high if seq_low >= top_low - window + 1 else top_high + 1
        else:
            # Case B: the window spans two subspaces; its bottom is in the previous one.
            bottom = (top_low - window + 1) & _SEQ32_MASK
            high = top_high - 1 if seq_low >= bottom else top_high
        if not 0 <= high <= _SEQ32_MASK:
            # Before the first subspace or past 2**64 - 1: no sender can have sent it.
            raise EspDrop(DropReason.REPLAY)
        return (high << 32) | seq_low

    def snapshot(self) -> dict[str, int | bool]:
        return {"size": self._size, "top": self._top, "esn": self._esn}

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self._size}, top={self._top}, esn={self._esn})"
