"""Test-suite settings: the scenario files under tests/data are inputs of tests, not suite items."""

pytest_plugins = ["pytester"]

collect_ignore_glob = ["data/*"]


def pytest_terminal_summary(terminalreporter: object, exitstatus: int, config: object) -> None:
    """After tests/test_differential.py ran: what its generated examples covered, summed over probes."""
    import sys

    module = sys.modules.get("tests.test_differential")
    coverage = getattr(module, "COVERAGE", None)
    if not coverage:
        return
    write = terminalreporter.write_line  # type: ignore[attr-defined]
    write(f"differential test: {coverage['examples']} examples, engine and Envoy mesh compared on "
          f"{coverage['probes']} observations")
    for key, count in sorted(coverage.items()):
        if key not in ("examples", "probes"):
            write(f"  {count:6d}  {key}")
