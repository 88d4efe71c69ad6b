"""A child process for the lifetime tests: starts a local mesh, reports it on stdout, then waits to be killed.

Run as `python -m tests.mesh_local.mesh_child MODE` from the repository root.
"""

from __future__ import annotations

import json
import sys
import threading

from conformance.mesh.local.mesh import LocalTarget
from tests.mesh_local.world import BACKEND, FRONTEND, OUTSIDER, scenario


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "sidecar"
    target = LocalTarget()
    session = target.start(scenario(FRONTEND, BACKEND, OUTSIDER), mode)  # type: ignore[arg-type]
    marker = session._marker.path if session._marker else None
    host_dir, host_marker = target.apps.files  # the target's app host: one more child, with its own marker
    print(json.dumps({"pids": [*session.pids(), target.apps.pid()], "tmpdir": str(session.tmpdir),
                      "marker": str(marker), "host_dir": str(host_dir), "host_marker": str(host_marker)}), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
