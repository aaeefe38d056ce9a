"""Identity patterns of hub entries (issue 10, ike/identity.py): what a pattern
matches, and when two entries' identities could match the same initiator."""

from __future__ import annotations

import pytest

from ike.identity import Identity, is_pattern, pattern_matches, patterns_overlap

P = Identity.parse
BRANCH = "*.branch.example.org"
DN = "C=CH, O=Example, OU=branches, CN=*"


@pytest.mark.parametrize(
    ("pattern", "identity", "matches"),
    [
        (BRANCH, "s1.branch.example.org", True),
        (BRANCH, "a.b.Branch.Example.org", True),  # any depth, any case
        (BRANCH, "branch.example.org", False),  # the domain itself is no spoke
        (BRANCH, "xbranch.example.org", False),  # a label boundary, not a suffix
        (BRANCH, "*.branch.example.org", False),  # a wildcard certificate names no one
        (BRANCH, "s1@branch.example.org", False),  # another ID type
        ("*@example.org", "ops@example.org", True),
        ("*@example.org", "ops@x.example.org", False),  # exactly that domain
        (DN, "C=CH, O=Example, OU=branches, CN=s1", True),
        (DN, "c=ch, o=example, ou=Branches, cn=S2", True),
        (DN, "C=CH, O=Example, CN=s1", False),  # another shape
        (DN, "C=CH, O=Other, OU=branches, CN=s1", False),
        (DN, "C=CH, O=Example, OU=branches, CN=*", False),
        ("s1.branch.example.org", "S1.branch.example.org", True),  # exact IDs: matches()
    ],
)
def test_pattern_matches(pattern: str, identity: str, matches: bool) -> None:
    assert pattern_matches(P(pattern), P(identity)) is matches


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (BRANCH, True),
        ("*@example.org", True),
        (DN, True),
        ("gw-a.example.org", False),
        ("*", False),
        ("a.*.example.org", False),
        ("C=CH, CN=gw-a", False),
        ("192.0.2.1", False),
    ],
)
def test_is_pattern(text: str, pattern: bool) -> None:
    assert is_pattern(P(text)) is pattern


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        (BRANCH, "*.example.org", True),
        (BRANCH, "*.other.example.org", False),
        (BRANCH, "s1.branch.example.org", True),
        ("s1.branch.example.org", BRANCH, True),
        (BRANCH, "s1.elsewhere.org", False),
        ("*@example.org", "*@example.org", True),
        ("*@example.org", "*@other.org", False),
        (DN, "C=CH, O=*, OU=branches, CN=x", True),
        (DN, "C=CH, O=Example, OU=hq, CN=*", False),
        ("a.example.org", "A.example.org", True),
        ("a.example.org", "b.example.org", False),
    ],
)
def test_patterns_overlap(a: str, b: str, overlap: bool) -> None:
    assert patterns_overlap(P(a), P(b)) is overlap
    assert patterns_overlap(P(b), P(a)) is overlap
