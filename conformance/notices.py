"""Warnings and report attachments a target produces while it works, delivered to the test they belong to.

Why this exists: pytest attributes a warning to the test running when `warnings.warn` is called, and
allure-pytest attaches a file to the test it is currently reporting, both on the main thread. When the
scheduler (schedule.py) runs several scenarios at once on a cluster, their steps run in worker threads,
ahead of the pytest items that report them; a warning raised there would land on whichever item the
main thread happens to be running (and `warnings.catch_warnings` is not thread-safe), and an Allure
attachment on no test at all. So targets never call either directly: they call `warn()` and `attach()`
here. On a thread with no capture (the local mesh, `--cluster-concurrency 1`) both act at once, as
before; inside `capture()` they are recorded, and the item that reports the step `replay()`s them.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Notices:
    """What one unit of work (a scenario's start, one step, its close) produced, in order."""

    warnings: list[tuple[str, type[Warning]]] = field(default_factory=list)
    attachments: list[tuple[str, str]] = field(default_factory=list)  # (name, text)

    def replay(self) -> None:
        """Raise the warnings and add the attachments on the calling thread (the reporting test's)."""
        for name, text in self.attachments:
            _attach_now(name, text)
        for message, category in self.warnings:
            warnings.warn(message, category, stacklevel=2)


_local = threading.local()


@contextlib.contextmanager
def capture() -> Iterator[Notices]:
    """Record, instead of emitting, every notice this thread produces inside the block."""
    outer = getattr(_local, "sink", None)
    sink = Notices()
    _local.sink = sink
    try:
        yield sink
    finally:
        _local.sink = outer


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    sink: Notices | None = getattr(_local, "sink", None)
    if sink is None:
        warnings.warn(message, category, stacklevel=3)
    else:
        sink.warnings.append((message, category))


def attach(name: str, text: str) -> None:
    """A text attachment of the running test's Allure result (nothing without allure-pytest)."""
    sink: Notices | None = getattr(_local, "sink", None)
    if sink is None:
        _attach_now(name, text)
    else:
        sink.attachments.append((name, text))


def _attach_now(name: str, text: str) -> None:
    try:
        import allure
    except ImportError:
        return
    allure.attach(text, name=name, attachment_type=allure.attachment_type.TEXT)
