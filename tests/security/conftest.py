"""Fixtures of the escape-regression suite; the shared helpers are in ``tests/security/__init__.py``."""

from __future__ import annotations

from collections.abc import Iterator

import helpers
import pytest

from security import Canary, host_canary


@pytest.fixture(params=["root", "rootless"])
def user(request) -> helpers.UnprivilegedUser | None:
    """Each attack runs once with a rootful runtime and once as an unprivileged user."""
    if request.param == "rootless":
        return request.getfixturevalue("unprivileged_user")
    return None


@pytest.fixture
def canary(leak_tracker: helpers.LeakTracker) -> Iterator[Canary]:
    """A host directory every test checks after its attack, whatever the outcome."""
    with host_canary(leak_tracker) as made:
        yield made
        made.assert_untouched()
