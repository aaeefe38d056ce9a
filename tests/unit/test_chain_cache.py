"""ike.certs.ChainCache: a verified path is remembered by its certificates and the
trust anchors; a changed trust store, a time outside the path's validity or a
different certificate is verified again; the cache stays within its bound."""

from __future__ import annotations

import contextlib
import datetime
from unittest import mock

import pytest
from cryptography import x509

from ike import certs
from ike.certs import ChainCache
from ike.errors import AuthenticationFailed
from tests.unit.test_auth_certs import DAY, KU_LEAF, NOW, Pki, Spec, der, new_pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    return new_pki()


def counting() -> contextlib.AbstractContextManager[mock.MagicMock]:
    """A spy on the full path validation (the work the cache saves)."""
    return mock.patch.object(certs, "_build_path", wraps=certs._build_path)


def test_second_verification_is_a_hit_and_returns_the_same_leaf(pki: Pki) -> None:
    cache = ChainCache()
    leaf = pki.leaf()
    with counting() as build:
        first = cache.verify(der(leaf), [der(pki.mid)], [pki.root], NOW)
        second = cache.verify(der(leaf), [der(pki.mid)], (pki.root,), NOW + DAY)
    assert first == leaf and second is first
    assert build.call_count == 1 and (cache.hits, cache.misses) == (1, 1)


def test_changed_trust_store_is_a_miss_and_can_refuse(pki: Pki) -> None:
    cache = ChainCache()
    leaf = der(pki.leaf())
    cache.verify(leaf, [der(pki.mid)], [pki.root], NOW)
    other = new_pki()
    with pytest.raises(AuthenticationFailed, match="no trusted CA"):
        cache.verify(leaf, [der(pki.mid)], [other.root], NOW)
    # both anchors: a new key again, verified (and accepted) anew
    with counting() as build:
        cache.verify(leaf, [der(pki.mid)], [other.root, pki.root], NOW)
    assert build.call_count == 1 and cache.misses == 3 and cache.hits == 0


def test_time_outside_the_validity_window_is_verified_again(pki: Pki) -> None:
    cache = ChainCache()
    short = pki.leaf(Spec("gw-short", key_usage=KU_LEAF, not_after=NOW + 2 * DAY))
    cache.verify(der(short), [der(pki.mid)], [pki.root], NOW)
    with pytest.raises(AuthenticationFailed, match="has expired"):
        cache.verify(der(short), [der(pki.mid)], [pki.root], NOW + 3 * DAY)
    with pytest.raises(AuthenticationFailed, match="not yet valid"):
        cache.verify(der(short), [der(pki.mid)], [pki.root], NOW - 60 * DAY)
    assert cache.hits == 0


def test_failures_are_not_remembered_and_other_certificates_miss(pki: Pki) -> None:
    cache = ChainCache()
    leaf = der(pki.leaf())
    with pytest.raises(AuthenticationFailed):
        cache.verify(leaf, [], [pki.root], NOW)  # the intermediate is missing
    assert len(cache) == 0
    cache.verify(leaf, [der(pki.mid)], [pki.root], NOW)
    other = der(pki.leaf(Spec("gw-b", key_usage=KU_LEAF)))
    assert cache.verify(other, [der(pki.mid)], [pki.root], NOW).subject != x509.Name([])
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 2)


def test_bounded_least_recently_used_goes_first(pki: Pki) -> None:
    cache = ChainCache(max_entries=3)
    leaves = [der(pki.leaf(Spec(f"gw-{k}", key_usage=KU_LEAF))) for k in range(5)]
    for leaf in leaves[:3]:
        cache.verify(leaf, [der(pki.mid)], [pki.root], NOW)
    cache.verify(leaves[0], [der(pki.mid)], [pki.root], NOW)  # 0 used again
    cache.verify(leaves[3], [der(pki.mid)], [pki.root], NOW)  # 1 goes
    cache.verify(leaves[4], [der(pki.mid)], [pki.root], NOW)  # 2 goes
    assert len(cache) == 3
    with counting() as build:
        cache.verify(leaves[0], [der(pki.mid)], [pki.root], NOW)
        cache.verify(leaves[1], [der(pki.mid)], [pki.root], NOW)
    assert build.call_count == 1 and len(cache) == 3


def test_naive_time_is_utc(pki: Pki) -> None:
    cache = ChainCache()
    leaf = der(pki.leaf())
    cache.verify(leaf, [der(pki.mid)], [pki.root], NOW)
    cache.verify(leaf, [der(pki.mid)], [pki.root], NOW.replace(tzinfo=None))
    assert cache.hits == 1
    assert NOW.tzinfo is datetime.UTC
