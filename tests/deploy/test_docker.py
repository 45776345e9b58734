"""The Dockerfile, checked without a Docker daemon: lint-clean, CUDA matching the pinned torch
wheel, context matching its COPYs, a final stage that pods can run (their uid, entrypoint
avfusion) with the compilers torch.compile calls, every runtime extra, and a requirement set
that provides every module the code imports."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import torch._inductor.config as inductor_config
import triton.runtime.build as triton_build
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from deploy import manifests, pod
from tests.deploy.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = str(Path(sys.executable).with_name("hadolint"))


def instructions(stage: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; ``stage="final"``: after the last FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    steps = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]
    if stage == "final":
        last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
        steps = steps[last_from:]
    return steps


def test_hadolint_reports_nothing():
    proc = subprocess.run(
        [HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_cuda_base_matches_the_pinned_torch_wheel():
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_pin,) = [p for p in pins if p.startswith("torch==")]
    assert torch.__version__.split("+")[0] == torch_pin.removeprefix("torch==")  # the pinned wheel
    (cuda,) = re.findall(r"^ARG CUDA_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert ".".join(cuda.split(".")[:2]) == torch.version.cuda
    bases = [args.split()[0] for op, args in instructions() if op == "FROM"]
    assert bases and all(b.startswith("nvidia/cuda:${CUDA_VERSION}-") for b in bases)


def test_build_context_holds_exactly_what_the_dockerfile_copies():
    ignore = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert ignore[0] == "*"  # allow-list: .venv, .git, tests stay out
    allowed = {p[1:].rstrip("/") for p in ignore if p.startswith("!")}
    copied = {
        src.rstrip("/")
        for op, args in instructions()
        if op == "COPY" and "--from=" not in args
        for src in args.split()[:-1]
        if not src.startswith("--")
    }
    assert copied == allowed
    assert all((REPO / p).exists() for p in copied)


def test_final_stage_runs_as_the_pod_user_with_entrypoint_avfusion():
    final = instructions("final")
    assert ("USER", f"{pod.UID}:{pod.UID}") in final
    assert ("ENTRYPOINT", '["avfusion"]') in final
    assert not any(op == "RUN" and "pip" in args.split() for op, args in final)  # no pip caches


def test_final_stage_has_the_compilers_torch_compile_calls_and_nothing_more():
    installs = [
        args for op, args in instructions("final") if op == "RUN" and "apt-get install" in args
    ]
    packages = {
        w
        for args in installs
        for w in args.split("apt-get install", 1)[1].split("&&")[0].split()
        if not w.startswith("-")
    }
    # The names the pinned torch/triton call: inductor's C++ compiler (config.cpp.cxx), Triton's C
    # compiler for its CUDA launcher (triton/runtime/build.py looks for gcc, then clang); both
    # include Python.h (python3-dev).
    inductor_cxx = inductor_config.cpp.cxx[1]
    assert inductor_cxx == "g++" and "gcc" in inspect.getsource(triton_build._find_compiler)
    assert "sysconfig" in inspect.getsource(triton_build._build)  # -I<Python include dir>
    assert packages == {"python3", "python3-dev", "gcc", inductor_cxx}


def image_extras() -> list[str]:
    """The extras the image installs, computed by the Dockerfile's own command."""
    (code,) = re.findall(r'extras=\$\(python3 -c "([^"]+)"\)', DOCKERFILE.read_text())
    assert '"./[$extras]"' in DOCKERFILE.read_text()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().split(",")


def test_image_installs_every_runtime_extra_and_no_dev_tools():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert image_extras() == sorted(set(extras) - {"dev"})
    # The rendered MLflow server stores runs in PostgreSQL and artifacts on S3 (boto3).
    server = next(d for d in manifests.base("mlflow.yaml") if d.get("kind") == "Deployment")
    assert server["spec"]["template"]["spec"]["containers"][0]["command"] == ["mlflow", "server"]
    installed = {Requirement(r).name for e in image_extras() for r in extras[e]}
    assert {"psycopg2-binary", "boto3"} <= installed


def requirement_closure(roots: list[str]) -> set[str]:
    """Canonical names of the distributions ``roots`` pull in (markers and extras evaluated)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for spec in importlib.metadata.requires(req.name) or []:
            dep = Requirement(spec)
            if dep.marker is None or any(
                dep.marker.evaluate({"extra": e}) for e in req.extras or {""}
            ):
                todo.append(dep)
    return seen


def shipped_packages() -> set[str]:
    """Our top-level packages, as pyproject.toml ships them (``packages.find include``)."""
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pattern.rstrip("*") for pattern in found["packages"]["find"]["include"]}


def third_party_imports() -> set[str]:
    """Top-level modules the shipped packages import, other than the standard library and ours."""
    ours = shipped_packages()
    found = set()
    for path in (p for pkg in ours for p in (REPO / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    return found - ours - set(sys.stdlib_module_names) - {"__future__"}


@pytest.mark.slow
def test_every_module_the_code_imports_comes_with_the_image_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = project["dependencies"] + [
        r for e in image_extras() for r in project["optional-dependencies"][e]
    ]
    closure = requirement_closure(runtime)
    providers = importlib.metadata.packages_distributions()
    missing = {
        m: providers.get(m)
        for m in third_party_imports()
        if not {canonicalize_name(d) for d in providers.get(m, [])} & closure
    }
    assert not missing, f"imported but not in the image's requirements: {missing}"
