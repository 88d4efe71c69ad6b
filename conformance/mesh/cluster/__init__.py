"""The cluster targets: `kind` (clusters the suite makes) and `cluster` (an existing one with Istio).

Why a package of small modules: everything that can be decided without a cluster is a pure module with
its own tests (tests/cluster), and only a thin layer talks to Kubernetes, Docker or istioctl:

- matrix.py: clusters/versions.yaml, the tested matrix (kind, node image, Istio releases, images), pinned;
- options.py: command-line options (pytest-kind's own are read, never registered again);
- availability.py: what is missing here, as one skip reason;
- naming.py: run-unique namespaces, mapped consistently inside policies and back in proofs;
- manifests/render.py: workloads from the templates in clusters/workloads;
- execprobe.py: many curl probes per exec, one POSIX sh script, one line per probe, strictly parsed;
- logs.py: each probe's own record in Envoy access logs and ztunnel's access lines (one matcher per session);
- barrier.py: waiting until a step's policies reached the enforcing proxies;
- istioctl.py: istioctl command lines and their output (install, analyze, ztunnel-config, tag);
- kube.py: the kubernetes client wrapper (server-side apply, rollouts, exec, logs);
- session.py: one scenario in one mode on a cluster (the MeshSession both targets hand out);
- kind.py, existing.py: the two targets; upgrade.py: canary upgrade with continuous probing.

Nothing here imports the verdict engine (an import contract): the targets observe, the engine predicts.
"""
