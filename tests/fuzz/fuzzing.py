"""A small deterministic mutation fuzzer for the decoders of untrusted bytes.

A :class:`Target` is one decoder: a seed corpus of genuine inputs (built with
the project's own builders), the call under test, and the exceptions that
call may raise on purpose (the project's own parse and drop errors). The
engine draws inputs from ``random.Random`` seeded with the run's seed, the
target's name and the shard, so a run is reproducible; every input either
returns or raises one of the allowed errors. Anything else is recorded with
the seed, the input's index and its bytes in hex, and fails the test.

Mutations (stacked one to four deep): bit flips, bytes set to interesting
values (0, 1, 0x7f, 0x80, 0xfe, 0xff) or to random ones, small additions,
16- and 32-bit fields set to extremes (0, 0x7fff, 0x8000, 0xffff, the
remaining length, ...), truncation, extension, insertion and deletion of
bytes, splices of two corpus items, a chunk repeated up to 64 KiB (deep
nesting, long numbers) and copies within the input; now and then plain
random bytes. A target may rewrite the result (``fixup``, e.g. an IKE Length
field made right so that parsing goes past the header) or generate its
inputs itself (``generate``, e.g. mutate a plaintext, then seal it with the
real key so that the fuzzer gets past the ICV).

Also checked: no single input takes longer than ``TUNNELD_FUZZ_SLOW_MS``
(50 ms); an input over the limit is run again (CPU time, after a GC) and
only fails if it is slow again.

Environment: ``TUNNELD_FUZZ_N`` inputs per target (1,000,000),
``TUNNELD_FUZZ_SEED`` (0), ``TUNNELD_FUZZ_WORKERS`` processes per target
(the number of CPUs), ``TUNNELD_FUZZ_SLOW_MS`` (50), ``TUNNELD_FUZZ_REPORT``
a file to append one JSON line per target to, ``TUNNELD_FUZZ_REPLAY`` the
hex of one input (or ``@path`` of a file holding it) to run instead of
fuzzing.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import multiprocessing
import os
import random
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R")
DEFAULT_N = 1_000_000
MAX_LEN = 70_000  # above the largest IKE message (64 KiB) and any sane ESP packet
MAX_FAILURES = 20  # per shard: stop after this many (they are usually one bug)
LARGE_INPUT = 16 * 1024  # slower than the limit is a known finding above this ...
LARGE_SLACK = 5  # ... up to this many times the limit (more: a failure, superlinear?)
HEX_INLINE = 2048  # inputs up to this many bytes are printed; longer ones go to a file

INTERESTING8 = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING16 = (0, 1, 2, 3, 4, 5, 7, 8, 0x10, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF)
INTERESTING32 = (0, 1, 0x7F, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip().replace("_", "")
    return int(value) if value else default


# -- mutations -----------------------------------------------------------------------


def _flip(rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int) -> bytearray:
    if data:
        for _ in range(rng.choice((1, 1, 1, 2, 4))):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return data


def _interesting_byte(
    rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int
) -> bytearray:
    if data:
        data[rng.randrange(len(data))] = rng.choice(INTERESTING8)
    return data


def _random_byte(
    rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int
) -> bytearray:
    if data:
        data[rng.randrange(len(data))] = rng.randrange(256)
    return data


def _arith(rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int) -> bytearray:
    if data:
        i = rng.randrange(len(data))
        data[i] = (data[i] + rng.choice((-1, 1)) * rng.randint(1, 16)) & 0xFF
    return data


def _field16(rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int) -> bytearray:
    """A 16-bit big-endian field set to an extreme or to a length seen from there."""
    if len(data) >= 2:
        i = rng.randrange(len(data) - 1)
        rest = len(data) - i
        value = rng.choice((*INTERESTING16, rest, rest - 1, rest + 1, rest + 2, len(data)))
        data[i : i + 2] = (value & 0xFFFF).to_bytes(2, "big")
    return data


def _field32(rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int) -> bytearray:
    if len(data) >= 4:
        i = rng.randrange(len(data) - 3)
        value = rng.choice((*INTERESTING32, len(data), len(data) - i, len(data) + 1))
        data[i : i + 4] = (value & 0xFFFFFFFF).to_bytes(4, "big")
    return data


def _truncate(
    rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int
) -> bytearray:
    if data:
        del data[rng.randrange(len(data)) :]
    return data


def _extend(rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int) -> bytearray:
    n = rng.choice((1, 2, 3, 4, 8, 16, 64))
    filler = rng.choice((b"\x00", b"\xff", None))
    data += filler * n if filler else rng.randbytes(n)
    return data


def _insert(rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int) -> bytearray:
    i = rng.randint(0, len(data))
    data[i:i] = rng.randbytes(rng.choice((1, 2, 4, 8, 16)))
    return data


def _delete(rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int) -> bytearray:
    if data:
        i = rng.randrange(len(data))
        del data[i : i + rng.choice((1, 2, 4, 8, 16, 64))]
    return data


def _splice(rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int) -> bytearray:
    other = rng.choice(corpus)
    cut = rng.randint(0, len(data))
    if rng.random() < 0.5:  # at the same offset: headers stay aligned
        return data[:cut] + bytearray(other[cut:])
    return data[:cut] + bytearray(other[rng.randint(0, len(other)) :])


def _repeat(rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int) -> bytearray:
    """A chunk repeated many times: deep nesting, long runs, huge counts."""
    if data:
        i = rng.randrange(len(data))
        chunk = bytes(data[i : i + rng.choice((1, 1, 2, 3, 4, 8))])
        times = rng.choice((2, 16, 100, 1000, 5000, limit))
        times = min(times, (limit - len(data)) // len(chunk))
        data[i:i] = chunk * max(times, 0)
    return data


def _copy(rng: random.Random, data: bytearray, corpus: Sequence[bytes], limit: int) -> bytearray:
    if len(data) >= 2:
        n = rng.randint(1, min(32, len(data) - 1))
        src, dst = rng.randrange(len(data) - n + 1), rng.randrange(len(data) - n + 1)
        data[dst : dst + n] = data[src : src + n]
    return data


Mutator = Callable[[random.Random, bytearray, Sequence[bytes], int], bytearray]
# Weighted by repetition: small in-place changes most often.
MUTATORS: tuple[Mutator, ...] = (
    *(_flip,) * 4,
    *(_interesting_byte,) * 3,
    *(_random_byte,) * 2,
    _arith,
    *(_field16,) * 3,
    _field32,
    *(_truncate,) * 2,
    _extend,
    _insert,
    _delete,
    *(_splice,) * 2,
    _repeat,
    _copy,
)


def mutate(
    rng: random.Random,
    corpus: Sequence[bytes],
    base: bytes | None = None,
    limit: int = MAX_LEN,
) -> bytearray:
    """One mutant of ``base`` (default: a corpus item), 1 to 4 stacked changes,
    at most ``limit`` bytes long."""
    if rng.random() < 1 / 64:
        return bytearray(rng.randbytes(rng.choice((0, 1, 4, 16, 28, 64, 300))))
    data = bytearray(rng.choice(corpus) if base is None else base)
    depth = 1
    while depth < 4 and rng.random() < 0.45:
        depth += 1
    for _ in range(depth):
        data = rng.choice(MUTATORS)(rng, data, corpus, limit)
        if len(data) > limit:
            del data[limit:]
    return data


# -- targets and the engine ----------------------------------------------------------


@dataclass
class Target:
    """One decoder under fuzz.

    ``run(data)`` returns truthy when the input was accepted (decoded,
    processed), falsy when it was refused without raising (a counted drop);
    raising one of ``allowed`` also counts as refused. ``known(exc, data)``
    names a crash already reported (its reason), which is then counted
    instead of failing the run; the test marks itself xfail with it.
    ``reset`` rebuilds state after an unexpected exception.
    """

    name: str
    corpus: Sequence[bytes]
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...] = ()
    fixup: Callable[[random.Random, bytearray], bytes | bytearray] | None = None
    generate: Callable[[random.Random], bytes] | None = None
    known: Callable[[BaseException, bytes], str | None] | None = None
    reset: Callable[[], None] | None = None
    stateful: bool = False  # replaying one input alone may not reproduce a failure
    max_len: int = MAX_LEN  # of the mutants (a generator keeps to its own)
    # Runs the whole loop (e.g. inside trio.run, for decoders that need a trio context).
    runner: Callable[[Callable[[], Any]], Any] | None = None

    def within(self, work: Callable[[], R]) -> R:
        return work() if self.runner is None else self.runner(work)

    def next_input(self, rng: random.Random) -> bytes:
        if self.generate is not None:
            return self.generate(rng)
        data = mutate(rng, self.corpus, limit=self.max_len)
        if self.fixup is not None:
            data = self.fixup(rng, data)
        return bytes(data)


@dataclass
class Failure:
    index: int
    shard: int
    data: bytes
    error: str  # the traceback, or what was too slow


@dataclass
class Stats:
    name: str
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    seconds: float = 0.0  # wall time of the fuzzing loop (the longest shard)
    wall_seconds: float = 0.0  # the whole run, setup and processes included
    cpu_seconds: float = 0.0  # summed over shards
    slowest: float = 0.0
    slowest_data: bytes = b""
    errors: Counter[str] = field(default_factory=Counter)  # allowed exceptions by type
    known: Counter[str] = field(default_factory=Counter)
    known_samples: dict[str, bytes] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    seed: int = 0
    workers: int = 1
    stateful: bool = False

    def merge(self, other: Stats) -> None:
        self.inputs += other.inputs
        self.accepted += other.accepted
        self.refused += other.refused
        self.seconds = max(self.seconds, other.seconds)
        self.cpu_seconds += other.cpu_seconds
        if other.slowest > self.slowest:
            self.slowest, self.slowest_data = other.slowest, other.slowest_data
        self.errors.update(other.errors)
        self.known.update(other.known)
        for reason, sample in other.known_samples.items():
            self.known_samples.setdefault(reason, sample)
        self.failures += other.failures
        self.stateful |= other.stateful

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        known = f", known crashes {dict(self.known)}" if self.known else ""
        return (
            f"{self.name}: {self.inputs} inputs in {self.seconds:.1f} s "
            f"({self.rate:,.0f}/s, {self.workers} worker(s)), accepted {self.accepted}, "
            f"refused {self.refused}, slowest {self.slowest * 1000:.2f} ms, "
            f"failures {len(self.failures)}{known}; refusals {dict(self.errors.most_common(8))}"
        )

    def as_json(self) -> str:
        return json.dumps(
            {
                "target": self.name,
                "inputs": self.inputs,
                "seconds": round(self.seconds, 2),
                "wall_seconds": round(self.wall_seconds, 2),
                "cpu_seconds": round(self.cpu_seconds, 2),
                "per_second": round(self.rate),
                "workers": self.workers,
                "accepted": self.accepted,
                "refused": self.refused,
                "slowest_ms": round(self.slowest * 1000, 3),
                "failures": len(self.failures),
                "known": dict(self.known),
                "refusals": dict(self.errors),
                "seed": self.seed,
            }
        )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No log records while fuzzing (a million of them would fill pytest's capture)."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _outcome(target: Target, data: bytes) -> tuple[str, BaseException | None]:
    try:
        result = target.run(data)
    except target.allowed as exc:
        return type(exc).__name__, None
    except Exception as exc:  # anything else is a finding
        return "crash", exc
    return ("accepted" if result else "refused"), None


def _retime(target: Target, data: bytes) -> float:
    """CPU time of the same input again (after a GC): a slow input must be slow twice."""
    best = float("inf")
    for _ in range(2):
        gc.collect()
        start = time.thread_time()
        with contextlib.suppress(Exception):
            target.run(data)
        best = min(best, time.thread_time() - start)
    return best


def _large_and_linear(data: bytes, elapsed: float, slow_limit: float) -> str | None:
    """A known finding: decoding costs a few microseconds per payload, TLV or 2 bytes,
    so some inputs near 64 KiB take over the limit (at most LARGE_SLACK times it)."""
    if len(data) > LARGE_INPUT and elapsed < LARGE_SLACK * slow_limit:
        return (
            f"inputs over {LARGE_INPUT // 1024} KiB took over {slow_limit * 1000:.0f} ms"
            " (linear-time decoding, microseconds per element)"
        )
    return None


def fuzz_shard(target: Target, n: int, seed: int, shard: int, slow_limit: float) -> Stats:
    """Run ``n`` inputs through ``target`` in this process."""
    rng = random.Random(f"{seed}:{target.name}:{shard}")
    stats = Stats(target.name, seed=seed, stateful=target.stateful)
    perf = time.perf_counter
    begin, cpu_begin = perf(), time.process_time()
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. cryptography's, once per odd certificate
        for index in range(n):
            data = target.next_input(rng)
            start = perf()
            kind, exc = _outcome(target, data)
            elapsed = perf() - start
            stats.inputs += 1
            if kind == "accepted":
                stats.accepted += 1
            elif kind == "refused":
                stats.refused += 1
            elif exc is None:
                stats.refused += 1
                stats.errors[kind] += 1
            else:
                reason = target.known(exc, data) if target.known is not None else None
                if reason is not None:
                    stats.known[reason] += 1
                    stats.known_samples.setdefault(reason, data)
                    stats.refused += 1
                else:
                    text = "".join(traceback.format_exception(exc))
                    stats.failures.append(Failure(index, shard, data, text))
                if target.reset is not None:
                    target.reset()
                if len(stats.failures) >= MAX_FAILURES:
                    break
            if elapsed > slow_limit:
                elapsed = min(elapsed, _retime(target, data))
                if elapsed > slow_limit:
                    reason = _large_and_linear(data, elapsed, slow_limit)
                    if reason is not None:
                        stats.known[reason] += 1
                        stats.known_samples.setdefault(reason, data)
                    else:
                        message = f"took {elapsed * 1000:.1f} ms (limit {slow_limit * 1000:.0f} ms)"
                        stats.failures.append(Failure(index, shard, data, message))
            if elapsed > stats.slowest:
                stats.slowest, stats.slowest_data = elapsed, data
    stats.seconds = perf() - begin
    stats.cpu_seconds = time.process_time() - cpu_begin
    return stats


# Targets are built in the worker processes (forked: the factory is inherited).
_FACTORIES: dict[str, Callable[[], Target]] = {}


def _worker(args: tuple[str, int, int, int, float]) -> Stats:
    name, n, seed, shard, slow_limit = args
    target = _FACTORIES[name]()
    gc.collect()
    gc.freeze()  # the setup's objects stay out of every later collection
    return target.within(lambda: fuzz_shard(target, n, seed, shard, slow_limit))


def fuzz(name: str, factory: Callable[[], Target]) -> Stats:
    """Run the profile for one target: ``TUNNELD_FUZZ_N`` inputs over the workers."""
    n = env_int("TUNNELD_FUZZ_N", DEFAULT_N)
    seed = env_int("TUNNELD_FUZZ_SEED", 0)
    slow_limit = env_int("TUNNELD_FUZZ_SLOW_MS", 50) / 1000
    workers = max(1, min(env_int("TUNNELD_FUZZ_WORKERS", os.cpu_count() or 1), n // 10_000 or 1))
    shares = [n // workers + (i < n % workers) for i in range(workers)]
    jobs = [(name, share, seed, shard, slow_limit) for shard, share in enumerate(shares)]
    _FACTORIES[name] = factory
    begin = time.perf_counter()
    if workers == 1:
        results = [_worker(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_worker, jobs, chunksize=1)
    total = Stats(name, seed=seed, workers=workers)
    for result in results:
        total.merge(result)  # seconds: the longest shard's loop (setup not counted)
    total.wall_seconds = time.perf_counter() - begin
    report = os.environ.get("TUNNELD_FUZZ_REPORT")
    if report:
        with open(report, "a") as out:
            out.write(total.as_json() + "\n")
    return total


def replay_input() -> bytes | None:
    """The input given in ``TUNNELD_FUZZ_REPLAY`` (hex, or ``@file`` holding hex)."""
    value = os.environ.get("TUNNELD_FUZZ_REPLAY", "").strip()
    if not value:
        return None
    if value.startswith("@"):
        with open(value[1:]) as f:
            value = f.read().strip()
    return bytes.fromhex(value)


def replay(target: Target, data: bytes) -> str:
    """Run one input; the outcome, or the traceback of a crash."""
    kind, exc = _outcome(target, data)
    if exc is None:
        return kind
    return "".join(traceback.format_exception(exc))


def show(data: bytes) -> str:
    """The input's hex, or where it was written when it is long."""
    if len(data) <= HEX_INLINE:
        return data.hex()
    fd, path = tempfile.mkstemp(prefix="tunneld-fuzz-", suffix=".hex")
    with os.fdopen(fd, "w") as f:
        f.write(data.hex())
    return f"({len(data)} bytes, hex in {path}: TUNNELD_FUZZ_REPLAY=@{path}) {data[:64].hex()}..."


def describe(stats: Stats) -> str:
    lines = [stats.summary()]
    for failure in stats.failures[:5]:
        lines.append(
            f"--- seed {stats.seed} shard {failure.shard} input #{failure.index}"
            f" ({len(failure.data)} bytes): {show(failure.data)}"
        )
        lines.append(failure.error.rstrip())
    if stats.stateful:
        lines.append("(stateful target: the input alone may not reproduce; rerun the seed)")
    return "\n".join(lines)


def profile(name: str, factory: Callable[[], Target]) -> Stats | None:
    """The body of every fuzz test: replay one input, or fuzz and judge the run.

    Fails on any finding (printing seed, index and input); a run that hit
    only crashes already reported (``Target.known``) ends as xfail with
    their reasons and a sample input each.
    """
    import pytest

    data = replay_input()
    if data is not None:
        target = factory()
        outcome = target.within(lambda: replay(target, data))
        print(f"{name}: {outcome}")
        assert "Traceback" not in outcome, outcome
        return None
    stats = fuzz(name, factory)
    print(stats.summary())
    assert not stats.failures, describe(stats)
    assert stats.inputs == 0 or stats.accepted, f"{name}: nothing accepted, the harness is broken"
    if stats.known:
        pytest.xfail(
            "; ".join(
                f"{reason} ({count}x, e.g. {show(stats.known_samples[reason])[:400]})"
                for reason, count in stats.known.items()
            )
        )
    return stats
