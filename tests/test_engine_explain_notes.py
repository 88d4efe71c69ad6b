"""explain prints a note only when it concerns the probe (issue 15): each note about how a proxy sees an attribute
appears when a policy at that proxy reads the attribute, and not otherwise. The enforcement path, the policies
that apply and the deciding rule are always there.

The notes' semantics are pinned elsewhere (tests/test_engine_rules.py: istio/istio#46982 for `ipBlocks` at a
waypoint, #53588 for `connection.sni` there); these tests only pin when explain says them.
"""

from __future__ import annotations

from dataclasses import replace

from conformance.model import Waypoint
from tests.engine_world import FINANCE, FRONTEND, ap, pa, probe, state, why

WAYPOINT = (Waypoint("waypoint", "default"),)
REFS = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]
IP_NOTE = "internal_client_address"
SNI_NOTE = "istio/istio#53588"


def text(d: object) -> str:
    return "\n".join(d.trace)  # type: ignore[attr-defined]


def test_waypoint_ip_note_only_when_a_waypoint_policy_reads_ip_blocks() -> None:
    with_ip = state(ap("wp-ip", {"targetRefs": REFS, "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/24"]}}]}]}),
                    waypoints=WAYPOINT)
    assert IP_NOTE in text(why(with_ip, probe(FRONTEND), "waypoint"))
    not_form = state(ap("wp-not-ip", {"targetRefs": REFS, "action": "DENY",
                                      "rules": [{"when": [{"key": "source.ip", "notValues": ["10.0.0.2"]}]}]}),
                     waypoints=WAYPOINT)
    assert IP_NOTE in text(why(not_form, probe(FRONTEND), "waypoint"))
    plain = state(ap("wp-get", {"targetRefs": REFS, "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
                  waypoints=WAYPOINT)
    d = why(plain, probe(FRONTEND), "waypoint")
    lines = text(d)
    assert IP_NOTE not in lines and SNI_NOTE not in lines
    # what explain must still say: the path, the policy that applies, the rule that decided
    assert "Waypoint default/waypoint serves default/backend" in lines
    assert "applies: ALLOW default/wp-get (targetRefs)" in lines
    assert (d.verdict, d.policy, d.rule) == ("allow", "default/wp-get", 0)
    assert "ALLOW default/wp-get rule 0 matches → allowed." in lines


def test_waypoint_ip_note_ignores_ip_blocks_in_policies_the_waypoint_does_not_apply() -> None:
    """A selector policy with ipBlocks is ztunnel's (it sees the waypoint's address there): not the waypoint note."""
    s = state(ap("l4-ip", {"selector": {"matchLabels": {"app": "backend"}},
                           "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.100"]}}]}]}), waypoints=WAYPOINT)
    d = why(s, probe(FRONTEND), "waypoint")
    assert d.verdict == "allow" and IP_NOTE not in text(d)
    assert "applies: ALLOW default/l4-ip (selector)" in text(d)


def test_waypoint_sni_note_only_when_a_waypoint_policy_reads_connection_sni() -> None:
    sni = "outbound_.8080_._.backend.default.svc.cluster.local"
    s = state(ap("wp-deny-sni", {"targetRefs": REFS, "action": "DENY",
                                 "rules": [{"when": [{"key": "connection.sni", "values": [sni]}]}]}),
              waypoints=WAYPOINT)
    lines = text(why(s, probe(FRONTEND), "waypoint"))
    assert SNI_NOTE in lines and IP_NOTE not in lines


def test_hbone_sidecar_notes_only_when_they_apply() -> None:
    """Mode mixed, an ambient client at a sidecar (path.py AMBIENT_TO_SIDECAR): the internal-address note needs an
    ipBlocks policy at that sidecar, the PeerAuthentication note a PeerAuthentication for that port."""
    planes = {"finance": "ambient", "default": "sidecar"}
    bare = replace(state(ap("by-ns", {"rules": [{"from": [{"source": {"namespaces": ["finance"]}}]}]})),
                   dataplanes=planes)
    lines = text(why(bare, probe(FINANCE), "mixed"))
    assert "on its HBONE listener" in lines
    assert IP_NOTE not in lines and "is not consulted" not in lines and "No client sidecar" not in lines
    full = replace(state(ap("from-ip", {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.4"]}}]}]})
                         + pa("strict", "STRICT")), dataplanes=planes)
    lines = text(why(full, probe(FINANCE), "mixed"))
    assert IP_NOTE in lines and "PeerAuthentication (STRICT on port 8080, from default/strict) is not consulted" \
        in lines


def test_tcp_note_on_http_only_attributes_only_when_a_policy_uses_one() -> None:
    ports_only = state(ap("tcp", {"rules": [{"to": [{"operation": {"ports": ["9000"]}}]}]}))
    lines = text(why(ports_only, probe(FRONTEND, port=9000)))
    assert "Port is TCP" in lines and "HTTP-only attributes" not in lines
    methods = state(ap("tcp", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}))
    d = why(methods, probe(FRONTEND, port=9000))
    assert d.verdict == "deny" and "HTTP-only attributes drop ALLOW rules" in text(d)


def test_source_note_names_the_disable_exception_only_for_a_disable_port() -> None:
    exception = "unless the destination port's PeerAuthentication mode is DISABLE"
    assert exception not in text(why(state(), probe(FRONTEND)))
    assert exception not in text(why(state(pa("off", "DISABLE")), probe(FRONTEND), "ambient"))
    assert exception in text(why(state(pa("off", "DISABLE")), probe(FRONTEND)))


def test_path_normalization_note_only_for_a_path_it_concerns() -> None:
    assert "is matched as" not in text(why(state(), probe(FRONTEND, path="/a/b")))
    assert "is matched as" in text(why(state(), probe(FRONTEND, path="/a/..;x/b")))
