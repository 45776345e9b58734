"""Shared by the deploy tests: the render entry point and where things sit in rendered pods."""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy import render as render_module

REPO = Path(__file__).resolve().parents[2]


def render_cli(argv: list[str]) -> int:
    """``avfusion deploy render ARGV`` through the module's own ``register``."""
    parser = argparse.ArgumentParser(prog="avfusion")
    render_module.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["deploy", "render", *argv])
    return args.func(args)


VGG, AS2M = str(REPO / "configs" / "vggsound.yaml"), str(REPO / "configs" / "as2m.yaml")
IMAGE = "registry.example.com/avfusion:0.1.0"


def containers(doc: dict) -> list[dict]:
    """Every container spec in a document, wherever the kind nests its pod template."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "containers" and isinstance(value, list):
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return found


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def node_pod(doc: dict) -> tuple[dict, list[str], dict[str, dict]]:
    """(pod-spec part, args, env) of the training node for either launcher."""
    if doc["kind"] == "TrainJob":
        patch = doc["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
        pod_spec = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
        trainer = doc["spec"]["trainer"]
        return pod_spec, trainer["args"], env_of(trainer)
    pod_spec = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    return pod_spec, pod_spec["containers"][0]["args"], env_of(pod_spec["containers"][0])
