"""Deployment tests: the container image (podman), Prometheus and promtool, Grafana,
Kubernetes manifests."""
