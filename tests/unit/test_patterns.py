"""The re-free matchers must answer exactly what re.search answers for the schemas' patterns."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocirt.spec.patterns import KNOWN

ALPHABET = "0123456789.-+,:/_ \n\tABGKMRLIMTXYZabcmrwxyzé"

SAMPLES = [
    "", "\n", "0.0.0", "1.3.0", "1.3.0\n", "01.3.0", "1.3", "1.3.0-rc.1", "1.3.0-rc..1", "1.3.0+build.5",
    "1.3.0-alpha+meta", "1.3.0-", "1.3.0+", "0-3,7", "0-3,7\n", "0-", ",1", "1,,2", "7", "/", "/x", "x/",
    "RLIMIT_NOFILE", "RLIMIT_", "RLIMIT_nofile", "RLIMIT_NOFILE\n", "2MB", "1GB", "0MB", "10KB\n", "2mb",
    "rwm", "", "rwx", "m\n", "MB:0=100", "MB:0=100\n", "MB:0=1\n2", "MB", "١.٢.٣",
]


@pytest.mark.parametrize("pattern", sorted(KNOWN))
def test_known_matchers_agree_with_re_on_samples(pattern):
    compiled = re.compile(pattern)
    for sample in SAMPLES:
        assert KNOWN[pattern](sample) == (compiled.search(sample) is not None), (pattern, sample)


@pytest.mark.parametrize("pattern", sorted(KNOWN))
@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet=ALPHABET, max_size=16))
def test_known_matchers_agree_with_re_on_random_text(pattern, text):
    assert KNOWN[pattern](text) == (re.compile(pattern).search(text) is not None)


def test_every_schema_pattern_has_a_matcher():
    # A pattern added to the schemas without a matcher would put `re` back on the create path.
    import json
    from pathlib import Path

    found = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.add(node["pattern"])
            for key in node.get("patternProperties", {}) or {}:
                found.add(key)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in (Path(__file__).resolve().parents[2] / "schemas").glob("*.json"):
        walk(json.loads(path.read_text()))
    assert found <= set(KNOWN), found - set(KNOWN)
