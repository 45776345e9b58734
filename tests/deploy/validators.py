"""Offline schema validation of rendered manifests.

Core kinds: ``kubernetes-validate --strict`` against a pinned Kubernetes version (schemas ship
with the package). Kubeflow kinds (TrainJob, TrainingRuntime, JobSet): the
``kubeflow-trainer-api`` pydantic models, strictly — a document must survive
``from_dict(doc).to_dict()`` unchanged, so unknown fields (which ``from_dict`` drops) fail like
wrong types do (defaults it adds are fine); the Job templates of a JobSet and of a
TrainingRuntime are also checked by kubernetes-validate as batch/v1 Jobs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml
from kubeflow_trainer_api import models

K8S_VERSION = "1.35.0"  # oldest Kubernetes we deploy to (backoffLimitPerIndex is GA since 1.33)
CRD_MODELS = {
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): models.TrainerV1alpha1TrainJob,
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): models.JobsetV1alpha2JobSet,
    ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime"): models.TrainerV1alpha1TrainingRuntime,
}
KUBERNETES_VALIDATE = str(Path(sys.executable).with_name("kubernetes-validate"))


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kubernetes_validate_cli(files: list[Path]) -> subprocess.CompletedProcess:
    """The command a user runs: ``kubernetes-validate --strict -k VERSION FILE...``."""
    return subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "-k", K8S_VERSION, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def is_crd(doc: dict) -> bool:
    return (doc["apiVersion"], doc["kind"]) in CRD_MODELS


def crd_errors(doc: dict) -> list[str]:
    """Differences between ``doc`` and its Kubeflow model round trip (empty: valid)."""
    model = CRD_MODELS[(doc["apiVersion"], doc["kind"])]
    try:
        parsed = model.from_dict(doc).to_dict()
    except ValueError as e:  # pydantic.ValidationError is a ValueError
        return [str(e).splitlines()[0] + ": " + " ".join(str(e).splitlines()[1:3])]
    return list(_diff(doc, parsed, doc["kind"]))


def _diff(want, got, path: str):
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(want):  # keys only in ``got`` are schema defaults: fine
            if key not in got:
                yield f"{path}.{key}: unknown field (dropped by the {path.split('.')[0]} model)"
            else:
                yield from _diff(want[key], got[key], f"{path}.{key}")
    elif isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            yield from _diff(w, g, f"{path}[{i}]")
    elif want != got or type(want) is not type(got):
        yield f"{path}: {want!r} became {got!r}"


def jobset_job_errors(doc: dict) -> list[str]:
    """Each replicated Job template of a JobSet (or of a TrainingRuntime's JobSet template),
    strictly validated as a batch/v1 Job."""
    errors = []
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "TrainingRuntime" else doc["spec"]
    for rjob in spec["replicatedJobs"]:
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"{doc['metadata']['name']}-{rjob['name']}-0"},
            "spec": rjob["template"]["spec"],
        }
        try:
            kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(
                f"replicatedJobs[{rjob['name']}]: {'.'.join(map(str, e.path))}: {e.message}"
            )
    return errors
