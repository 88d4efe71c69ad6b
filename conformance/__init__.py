"""istio-authz-conformance: prove what Istio AuthorizationPolicies actually do.

The package splits like Cyclonus does: `engine` predicts and explains verdicts (pure, no I/O),
`mesh` holds the targets that run scenarios for real, `probe` classifies what a request observed,
`plugin` is the thin pytest glue, `report` renders truth tables, `cli` is the command line.
"""

__version__ = "0.1.0"
