"""The cluster options: the opt-in that weakens the suite says so, and reaches the settings."""

from __future__ import annotations

from typing import Any

from conformance.mesh.cluster.options import ClusterSettings, add_cluster_options


class Group:
    """Collects `addoption` calls as pytest's option group would."""

    def __init__(self) -> None:
        self.options: dict[str, dict[str, Any]] = {}

    def addoption(self, name: str, **kw: Any) -> None:
        self.options[name] = kw


class Config:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def getoption(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)


def test_accepting_unconfirmed_denials_is_an_explicit_documented_opt_in():
    group = Group()
    add_cluster_options(group, None)
    option = group.options["--accept-unconfirmed-denials"]
    assert option["action"] == "store_true"
    assert "WEAKENS THE SUITE" in option["help"] and "unconfirmed" in option["help"]
    assert not ClusterSettings.from_config(Config({})).accept_unconfirmed_denials
    assert ClusterSettings.from_config(Config({"accept_unconfirmed_denials": True})).accept_unconfirmed_denials
