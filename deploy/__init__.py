"""Kubernetes manifests for cluster runs (``avfusion deploy render``) and the in-pod launcher;
imports nothing of the other packages (the image runs them)."""
