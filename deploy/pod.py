"""Pod pieces shared by every avfusion workload: environment, volumes, resources, security.

The names of the cluster objects the pods expect live here, once: the ConfigMap
``avfusion-env`` (rendered), the Secrets ``avfusion-s3`` and ``avfusion-mlflow-db`` (created
with kubectl, never rendered) and the checkpoint claim ``avfusion-runs``.
"""

from __future__ import annotations

ENV_CONFIGMAP = "avfusion-env"
S3_SECRET = "avfusion-s3"  # keys: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
DB_SECRET = "avfusion-mlflow-db"  # keys: password, uri (postgresql://...)
MLFLOW_AUTH_SECRET = "avfusion-mlflow-auth"  # optional; keys: MLFLOW_TRACKING_USERNAME, _PASSWORD
RUNS_CLAIM = "avfusion-runs"
UID = 10001  # the image's non-root user (Dockerfile)

CONFIG_DIR = "/etc/avfusion"  # the run config, from ConfigMap <run>-config
CACHE_DIR = "/cache"  # node-local scratch: shard cache
RUNS_DIR = "/mnt/runs"  # checkpoints (avfusion-runs claim)
SHM_DIR = "/dev/shm"  # loader workers pass batches through shared memory
GPU = "nvidia.com/gpu"

POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
GPU_TOLERATIONS = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]


def _env_from(name: str, source: str, ref: dict, optional: bool) -> dict:
    return {
        "name": name,
        "valueFrom": {source: {**ref, **({"optional": True} if optional else {})}},
    }


def secret_env(name: str, secret: str, key: str | None = None, optional: bool = False) -> dict:
    return _env_from(name, "secretKeyRef", {"name": secret, "key": key or name}, optional)


def config_env(name: str, optional: bool = False) -> dict:
    return _env_from(name, "configMapKeyRef", {"name": ENV_CONFIGMAP, "key": name}, optional)


def s3_env() -> list[dict]:
    """S3 credentials (Secret) and endpoint/region (ConfigMap) for s3fs and boto3."""
    return [
        secret_env("AWS_ACCESS_KEY_ID", S3_SECRET),
        secret_env("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        config_env("AWS_ENDPOINT_URL", optional=True),
        config_env("AWS_DEFAULT_REGION"),
    ]


def train_env() -> list[dict]:
    """What a training container reads besides the torch.distributed variables (an MLflow
    server with basic auth: user and password from an optional Secret, never in the URI)."""
    return [
        *s3_env(),
        config_env("MLFLOW_TRACKING_URI"),
        config_env("NCCL_DEBUG"),
        *(
            secret_env(name, MLFLOW_AUTH_SECRET, optional=True)
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        ),
    ]


def resources(cpu: str, memory: str, gpus: int = 0) -> dict:
    """Requests = limits for memory and GPUs; no CPU limit (throttling stalls collectives)."""
    requests = {"cpu": cpu, "memory": memory}
    limits = {"memory": memory}
    if gpus:
        requests[GPU] = limits[GPU] = str(gpus)
    return {"requests": requests, "limits": limits}


def train_volumes(config_map: str, shm_size: str, cache_size: str) -> list[dict]:
    """Run config, memory-backed /dev/shm, node-local cache, shared checkpoint claim."""
    return [
        {"name": "run-config", "configMap": {"name": config_map}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
        {"name": "cache", "emptyDir": {"sizeLimit": cache_size}},
        {"name": "runs", "persistentVolumeClaim": {"claimName": RUNS_CLAIM}},
    ]


def train_mounts() -> list[dict]:
    return [
        {"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": SHM_DIR},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "runs", "mountPath": RUNS_DIR},
    ]


def container(
    base: dict,
    *,
    image: str,
    args: list[str],
    env: list[dict],
    resources: dict,
    mounts: list[dict] | None = None,
    command: list[str] | None = None,
) -> dict:
    """Fill a base container (name, fixed fields) with the run's image, args and environment."""
    out = {
        **base,
        "image": image,
        "args": args,
        "env": env,
        "resources": resources,
        "securityContext": CONTAINER_SECURITY,
    }
    if command is not None:
        out["command"] = command
    if mounts:
        out["volumeMounts"] = mounts
    return out
