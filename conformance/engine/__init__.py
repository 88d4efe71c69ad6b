"""The verdict engine: predicts and explains Istio's authorization decision for a probe in each mode.

Pure Python, no I/O. `decide` gives the verdict, the enforcing layer, the deciding policy and rule, and
the outcome form a client observes; `explain` adds the reasoning; `decide_matrix` decides every source to every
destination port at once (all-pairs matrices). It shares no code with the local
mesh's Envoy compiler (an import-linter contract checks it): the two are independent implementations
of the same semantics and check each other.
"""

from conformance.engine.decide import Decision, State, decide, explain
from conformance.engine.fast import decide_matrix
from conformance.engine.state import state_for_step

__all__ = ["Decision", "State", "decide", "decide_matrix", "explain", "state_for_step"]
