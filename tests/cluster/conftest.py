"""Fixtures shared by the cluster tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _keep_the_sigterm_handler() -> Iterator[None]:
    """The cluster targets make SIGTERM a KeyboardInterrupt when they are available (kind.sigterm_interrupts);
    a test must not leave that in the test process."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)
