"""pytest plugin: collects scenario files and runs them on a target (being built; see issue 3)."""
