"""Value types of command-line options shared by the pytest plugin and the cluster options.

argparse turns an ArgumentTypeError into a usage error (pytest: exit 4, one line, no traceback), before anything is
collected or started.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def positive_int(what: str) -> Callable[[str], int]:
    """A type for an option that takes a whole number of `what`, at least 1."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be a whole number of {what}, at least 1 (got {text!r})")
        return value

    parse.__name__ = f"whole number of {what}"
    return parse
