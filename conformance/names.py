"""Istio's own names (annotations, labels, class names, API groups) that several parts of the suite use.

Why one home: the scenario validation, the local mesh's compiler and the cluster targets must all read
the same annotation and attach to the same class; a name copied into each is a name that can drift.
Each constant cites where Istio (or the Gateway API) defines it. This module holds names only, no
behaviour, so both independent implementations (the engine and the local mesh) may import it.
"""

from __future__ import annotations

# istio/api annotation/annotations.gen.go IoIstioDryRun: "true" puts an AuthorizationPolicy in dry-run.
DRY_RUN_ANNOTATION = "istio.io/dry-run"

# istio/istio pkg/config/constants WaypointGatewayClassName: the GatewayClass of Istio's waypoints.
WAYPOINT_GATEWAY_CLASS = "istio-waypoint"

# The Gateway API group (gateway.networking.k8s.io), of Gateway and GatewayClass targetRefs.
GATEWAY_API_GROUP = "gateway.networking.k8s.io"

# istio/api label/labels.gen.go IoK8sNetworkingGatewayGatewayName: the label a gateway's (and a
# waypoint's) pods carry, naming their Gateway; ShouldAttachPolicy reads it (policyattachment.go).
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
