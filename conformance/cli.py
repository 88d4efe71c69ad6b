"""`authz-conformance` command line (being built)."""


def main() -> int:
    return 0
