"""Kubernetes objects a scenario needs on a cluster, rendered from the templates in clusters/workloads."""
