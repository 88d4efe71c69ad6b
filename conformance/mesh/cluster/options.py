"""Command-line options of the cluster targets (kind and existing clusters), added by the plugin.

pytest-kind, when installed, already registers `--cluster-name`, `--keep-cluster`, `--kubeconfig`,
`--kind-image` and `--kind-bin`; registering them again crashes pytest, so they are never added here.
"""

from __future__ import annotations

from typing import Any


def add_cluster_options(group: Any, parser: Any) -> None:
    """Options for `--mesh kind` and `--mesh cluster` (being built: issue 6)."""
