"""Test-suite settings: the scenario files under tests/data are inputs of tests, not suite items."""

pytest_plugins = ["pytester"]

collect_ignore_glob = ["data/*"]
