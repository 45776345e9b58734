"""Kubernetes documents for one run: the base manifests in deploy/k8s/ filled from a ``Run``.

Every function returns plain dicts (what ``yaml.safe_dump`` writes and ``kubectl`` reads).
File name → documents, in apply order, comes from ``render_run``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import resources as importlib_resources

import yaml

from deploy import pod, preemption

TRAIN_COMMAND = ["python", "-m", "deploy.launch"]
MASTER_PORT = 29500  # Kubeflow Trainer's ContainerTrainerPort
MLFLOW_SERVICE, MLFLOW_PORT = "avfusion-mlflow", 5000
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
LAUNCHERS = ("trainjob", "jobset")
NODE = "node"  # replicated job and container of the training pods (Kubeflow's torch runtime)


@dataclass(frozen=True)
class Run:
    """Everything a render needs; built and checked by deploy.render."""

    name: str
    namespace: str
    image: str
    config_name: str  # file name of the run config inside its ConfigMap
    config_text: str
    experiment: str
    shards: str  # data.shards of the run config
    nodes: int
    gpus_per_node: int
    cpu: str  # per node
    memory: str
    shm_size: str
    cache_gb: int
    overrides: tuple[str, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()  # literal NAME=VALUE for training pods (NCCL_*)
    launcher: str = "trainjob"
    grace_seconds: int = preemption.DEFAULT_GRACE_S  # terminationGracePeriodSeconds of nodes
    mlflow_artifacts: str = ""
    s3_endpoint: str | None = None
    shards_input: str | None = None  # set: render the shard-building Jobs
    shards_parts: int = 8
    shards_parallelism: int = 8
    shards_cpu: str = "4"
    shards_memory: str = "8Gi"

    @property
    def parts(self) -> list[str]:
        """Where completion index K of the build job writes: ``<shards>-parts/part-K``."""
        root = self.shards.rstrip("/") + "-parts"
        return [f"{root}/part-{k}" for k in range(self.shards_parts)]


def base(name: str) -> list[dict]:
    """The documents of deploy/k8s/<name> (a fresh copy on every call)."""
    text = importlib_resources.files("deploy").joinpath("k8s", name).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _meta(doc: dict, run: Run, name: str | None = None) -> dict:
    """Namespace every document; ``name`` marks a per-run object (label + annotations)."""
    meta = doc["metadata"]
    doc["metadata"] = {"name": name or meta["name"], "namespace": run.namespace, **meta}
    if name:
        doc["metadata"].update(
            name=name,
            annotations={
                "avfusion.dev/experiment": run.experiment,
                "avfusion.dev/run-config": run.config_name,
            },
        )
        doc["metadata"]["labels"]["avfusion.dev/run"] = run.name
    return doc


# ---- cluster settings, run config, MLflow --------------------------------------------------


def config_docs(run: Run) -> list[dict]:
    env_map, claim = base("config.yaml")
    env_map["data"]["MLFLOW_TRACKING_URI"] = (
        f"http://{MLFLOW_SERVICE}.{run.namespace}.svc:{MLFLOW_PORT}"
    )
    if run.s3_endpoint:
        env_map["data"]["AWS_ENDPOINT_URL"] = run.s3_endpoint
    run_config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{run.name}-config",
            "labels": {"app.kubernetes.io/part-of": "avfusion"},
        },
        "data": {run.config_name: run.config_text},
    }
    return [
        _meta(env_map, run),
        _meta(run_config, run, run_config["metadata"]["name"]),
        _meta(claim, run),
    ]


def mlflow_allowed_hosts(namespace: str) -> str:
    """Host headers the server accepts: its Service names (any port) and port-forwards."""
    svc = MLFLOW_SERVICE
    return ",".join(
        [
            svc,
            f"{svc}:*",
            f"{svc}.{namespace}",
            f"{svc}.{namespace}:*",
            f"{svc}.{namespace}.svc*",
            "localhost",
            "localhost:*",
            "127.0.0.1:*",
        ]
    )


def mlflow_docs(run: Run) -> list[dict]:
    docs = [_meta(doc, run) for doc in base("mlflow.yaml")]
    server = next(d for d in docs if d["kind"] == "Deployment")
    spec = server["spec"]["template"]["spec"]
    spec["securityContext"] = pod.POD_SECURITY
    args = [
        "--host",
        "0.0.0.0",
        "--port",
        str(MLFLOW_PORT),
        "--workers",
        "2",
        "--serve-artifacts",
        "--artifacts-destination",
        run.mlflow_artifacts,
        "--allowed-hosts",
        mlflow_allowed_hosts(run.namespace),
    ]
    # NOTE: the database URI comes from the Secret through MLFLOW_BACKEND_STORE_URI (an env var
    # `mlflow server` reads), never as an argument; MLflow's boto3 reads MLFLOW_S3_ENDPOINT_URL.
    env = [
        pod.secret_env("MLFLOW_BACKEND_STORE_URI", pod.DB_SECRET, "uri"),
        *pod.s3_env(),
        {**pod.config_env("AWS_ENDPOINT_URL", optional=True), "name": "MLFLOW_S3_ENDPOINT_URL"},
    ]
    base_container = spec["containers"][0]
    spec["containers"] = [
        pod.container(
            base_container,
            image=run.image,
            args=args,
            env=env,
            resources=base_container["resources"],
        )
    ]
    return docs


# ---- shard building ------------------------------------------------------------------------


def shards_docs(run: Run) -> list[dict]:
    build, merge = base("shards.yaml")
    _meta(build, run, f"{run.name}-shards-build")
    build["spec"]["completions"] = run.shards_parts
    build["spec"]["parallelism"] = min(run.shards_parts, run.shards_parallelism)
    root = run.parts[0].rsplit("/", 1)[0]
    # PART_INDEX is declared before use so `$(PART_INDEX)` expands in args (Kubernetes only
    # expands variables of the container's own env list).
    env = [
        {"name": "PART_INDEX", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
        *pod.s3_env(),
    ]
    args = [
        "shards",
        "build",
        run.shards_input,
        "--out",
        f"{root}/part-$(PART_INDEX)",
        "--part-index",
        "$(PART_INDEX)",
        "--num-parts",
        str(run.shards_parts),
        "--workers",
        run.shards_cpu,
        "--resume",
    ]
    _fill_job(build, run, args, env)

    _meta(merge, run, f"{run.name}-shards-merge")
    _fill_job(merge, run, ["shards", "merge", *run.parts, "--out", run.shards], pod.s3_env())
    return [build, merge]


def _fill_job(job: dict, run: Run, args: list[str], env: list[dict]) -> None:
    spec = job["spec"]["template"]["spec"]
    spec["securityContext"] = pod.POD_SECURITY
    spec["containers"] = [
        pod.container(
            spec["containers"][0],
            image=run.image,
            args=args,
            env=env,
            resources=pod.resources(run.shards_cpu, run.shards_memory),
        )
    ]


# ---- training ------------------------------------------------------------------------------


def train_args(run: Run) -> list[str]:
    """``pipeline.train`` arguments: the mounted run config, pod paths, then user overrides."""
    return [
        "--config",
        f"{pod.CONFIG_DIR}/{run.config_name}",
        f"train.output_dir={pod.RUNS_DIR}/{run.name}",
        f"data.cache_dir={pod.CACHE_DIR}/shards",
        # NOTE: the cache may fill 80 % of its volume; past sizeLimit the kubelet evicts.
        f"data.cache_limit_gb={0.8 * run.cache_gb:g}",
        *run.overrides,
    ]


def _train_env(run: Run) -> list[dict]:
    """ConfigMap/Secret references and torchrun's shutdown timeout, then ``--env`` literals
    (replacing a same-named one)."""
    env = {e["name"]: e for e in [*pod.train_env(), preemption.agent_env(run.grace_seconds)]}
    env.update({name: {"name": name, "value": value} for name, value in run.extra_env})
    return list(env.values())


def _train_volumes(run: Run) -> list[dict]:
    return pod.train_volumes(f"{run.name}-config", run.shm_size, f"{run.cache_gb}Gi")


def trainjob(run: Run) -> dict:
    (doc,) = base("trainjob.yaml")
    _meta(doc, run, run.name)
    trainer = doc["spec"]["trainer"]
    trainer.update(
        image=run.image,
        args=train_args(run),
        numNodes=run.nodes,
        numProcPerNode=run.gpus_per_node,
        env=_train_env(run),
        resourcesPerNode=pod.resources(run.cpu, run.memory, run.gpus_per_node),
    )
    node_patch = doc["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]
    node_patch["spec"] = {
        "terminationGracePeriodSeconds": run.grace_seconds,
        "securityContext": pod.POD_SECURITY,
        "tolerations": pod.GPU_TOLERATIONS,
        "volumes": _train_volumes(run),
        # NOTE: the trainer webhook forbids env here for container "node" (trainer.env has it).
        "containers": [
            {
                "name": NODE,
                "securityContext": pod.CONTAINER_SECURITY,
                "volumeMounts": pod.train_mounts(),
            }
        ],
    }
    return doc


def torch_env(run: Run) -> list[dict]:
    """The PET_* variables Kubeflow's torch plugin injects, for the JobSet fallback."""
    leader = f"{run.name}-node-0-0.{run.name}"  # <jobset>-<replicatedJob>-<job>-<pod>.<subdomain>
    return [
        {"name": "PET_NNODES", "value": str(run.nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(run.gpus_per_node)},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
        {"name": "PET_MASTER_ADDR", "value": leader},
        {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)},
    ]


def jobset(run: Run) -> dict:
    (doc,) = base("jobset.yaml")
    _meta(doc, run, run.name)
    job = doc["spec"]["replicatedJobs"][0]["template"]["spec"]
    job["completions"] = job["parallelism"] = run.nodes
    preemption.restartable_job(job, NODE)
    preemption.restart_preempted(doc["spec"]["failurePolicy"])
    spec = job["template"]["spec"]
    spec.update(
        terminationGracePeriodSeconds=run.grace_seconds,
        securityContext=pod.POD_SECURITY,
        tolerations=pod.GPU_TOLERATIONS,
        volumes=_train_volumes(run),
    )
    node = pod.container(
        spec["containers"][0],
        image=run.image,
        command=TRAIN_COMMAND,
        args=train_args(run),
        env=[*torch_env(run), *_train_env(run)],
        resources=pod.resources(run.cpu, run.memory, run.gpus_per_node),
        mounts=pod.train_mounts(),
    )
    node["ports"] = [{"containerPort": MASTER_PORT}]
    spec["containers"] = [node]
    return doc


def training_runtime(run: Run) -> dict:
    """The namespace's TrainingRuntime ``avfusion-torch``: torch-distributed + restart policies."""
    (doc,) = base("runtime.yaml")
    spec = _meta(doc, run)["spec"]["template"]["spec"]
    preemption.restart_preempted(spec["failurePolicy"])
    (node,) = spec["replicatedJobs"]
    preemption.restartable_job(node["template"]["spec"], NODE)
    return doc


def render_run(run: Run) -> dict[str, list[dict]]:
    """File name → documents, in the order they are applied (detached from module constants).
    The TrainJob's runtime is a setting of the namespace, like the checkpoint claim: 00."""
    config = config_docs(run) + ([training_runtime(run)] if run.launcher == "trainjob" else [])
    files = {"00-config.yaml": config, "10-mlflow.yaml": mlflow_docs(run)}
    if run.shards_input:
        build, merge = shards_docs(run)
        files["20-shards-build.yaml"], files["30-shards-merge.yaml"] = [build], [merge]
    files["40-train.yaml"] = [trainjob(run) if run.launcher == "trainjob" else jobset(run)]
    return copy.deepcopy(files)
