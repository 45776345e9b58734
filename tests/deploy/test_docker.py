"""The Dockerfile: lint-clean, CUDA matching the pinned torch wheel, context matching its COPYs,
a final stage that pods can run (their uid, entrypoint avfusion, no build tools)."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import torch

from deploy import pod
from tests.deploy.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = str(Path(sys.executable).with_name("hadolint"))


def instructions(stage: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; ``stage="final"``: after the last FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    steps = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]
    if stage == "final":
        last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
        steps = steps[last_from:]
    return steps


def test_hadolint_reports_nothing():
    proc = subprocess.run([HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_cuda_base_matches_the_pinned_torch_wheel():
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_pin,) = [p for p in pins if p.startswith("torch==")]
    assert torch.__version__.split("+")[0] == torch_pin.removeprefix("torch==")   # the pinned wheel
    (cuda,) = re.findall(r"^ARG CUDA_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert ".".join(cuda.split(".")[:2]) == torch.version.cuda
    bases = [args.split()[0] for op, args in instructions() if op == "FROM"]
    assert bases and all(b.startswith("nvidia/cuda:${CUDA_VERSION}-") for b in bases)


def test_build_context_holds_exactly_what_the_dockerfile_copies():
    ignore = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*"                                   # allow-list: .venv, .git, tests stay out
    allowed = {p[1:].rstrip("/") for p in ignore if p.startswith("!")}
    copied = {src.rstrip("/") for op, args in instructions() if op == "COPY" and "--from=" not in args
              for src in args.split()[:-1] if not src.startswith("--")}
    assert copied == allowed
    assert all((REPO / p).exists() for p in copied)


def test_final_stage_runs_as_the_pod_user_with_entrypoint_avfusion():
    final = instructions("final")
    installs = [args for op, args in final if op == "RUN" and "apt-get install" in args]
    packages = {w for args in installs for w in args.split("apt-get install", 1)[1].split("&&")[0].split()
                if not w.startswith("-")}
    assert packages == {"python3"}                           # no compilers, no -dev, no pip caches
    assert ("USER", f"{pod.UID}:{pod.UID}") in final
    assert ("ENTRYPOINT", '["avfusion"]') in final
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = set(re.findall(r'\./\[(\w+)\]', DOCKERFILE.read_text()))
    assert wanted and wanted <= set(extras)                  # the extras the image installs exist
