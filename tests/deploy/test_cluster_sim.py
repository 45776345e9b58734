"""The rendered pods, run as local processes: what the manifests say is what starts.

A 2-part shard build (Indexed Job + merge Job), the MLflow Deployment and a 2-node × 1-process
JobSet run of configs/debug.yaml are rendered; their containers run here with the environment
Kubernetes would give them, resolved from the rendered documents (values, ConfigMaps, the
completion index) and from Secrets created the way docs/DEPLOY.md says. Only the cluster is
simulated: volumes are directories (a claim is one directory shared by all pods), cluster DNS
names resolve to 127.0.0.1, fixed ports become free ports, sqlite stands in for PostgreSQL, and
the S3 store is a real `rclone serve s3` process. Nodes are CPU nodes (DS_ACCELERATOR=cpu).
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from deploy.manifests import COMPLETION_INDEX, MLFLOW_PORT, MLFLOW_SERVICE
from tests.deploy.helpers import REPO, env_of, node_pod, render_cli
from tests.deploy.validators import load_docs
from tests.support.procs import AVFUSION, free_port

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

NAME, NAMESPACE, BUCKET = "sim", "avfusion", "my-bucket"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "simkey", "AWS_SECRET_ACCESS_KEY": "simsecret"}


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # answering, even if with an error status
        except OSError:
            assert proc.poll() is None, f"{what} exited during start-up"
            time.sleep(0.3)
    raise AssertionError(f"{what} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real S3 server, and the rendered manifests of a 2-part shard build from a video list on
    it and of a 2-node × 1-process JobSet run of configs/debug.yaml on the built shards."""
    root = tmp_path_factory.mktemp("cluster")
    (root / "s3" / BUCKET).mkdir(parents=True)  # the bucket is a directory rclone serves
    s3_port = free_port()
    s3 = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("rclone")),
            "serve",
            "s3",
            "--addr",
            f"127.0.0.1:{s3_port}",
            "--auth-key",
            ",".join(S3_KEYS.values()),
            str(root / "s3"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{s3_port}/", s3, "rclone serve s3")
    run_config = yaml.safe_load((REPO / "configs" / "debug.yaml").read_text())
    run_config["data"]["shards"] = f"s3://{BUCKET}/shards"
    run_config["probe"]["shards"] = None
    (root / "debug.yaml").write_text(yaml.safe_dump(run_config))
    assert (
        render_cli(
            [
                "--run-config",
                str(root / "debug.yaml"),
                "--nodes",
                "2",
                "--gpus-per-node",
                "1",
                "--image",
                "avfusion:test",
                "--launcher",
                "jobset",
                "--name",
                NAME,
                "--s3-endpoint",
                f"http://127.0.0.1:{s3_port}",
                "--shards-job",
                "--shards-input",
                f"s3://{BUCKET}/videos/labels.csv",
                "--shards-parts",
                "2",
                "--shards-cpu",
                "1",
                "--out",
                str(root / "k8s"),
                "train.max_steps=2",
                "data.batch_size=4",
                "train.log_every=1",
                "tracking.system_metrics=false",
            ]
        )
        == 0
    )
    docs = [d for f in sorted((root / "k8s").glob("*.yaml")) for d in load_docs(f)]
    yield root, docs
    s3.kill()
    s3.wait()


class Cluster:
    """Runs rendered pod specs as local processes: the kubelet's part, on this machine."""

    def __init__(self, root: Path, docs: list[dict], secrets: dict[str, dict[str, str]]):
        self.root, self.docs, self.secrets = root, docs, secrets
        self.config_maps = {
            d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"
        }
        self.claims = root / "claims"  # a PersistentVolumeClaim: one shared dir
        self.dns: dict[str, str] = {}  # cluster name → local address

    def doc(self, kind: str, name: str) -> dict:
        (doc,) = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        return doc

    def env(self, container: dict, index: int) -> dict[str, str]:
        """The container's environment as the kubelet builds it (completion index ``index``)."""
        env = {}
        for name, var in env_of(container).items():
            ref = var.get("valueFrom", {})
            if "value" in var:
                env[name] = var["value"]
                continue
            if "fieldRef" in ref:
                assert ref["fieldRef"]["fieldPath"] == COMPLETION_INDEX
                env[name] = str(index)
                continue
            kind, source = (
                ("configMapKeyRef", self.config_maps)
                if "configMapKeyRef" in ref
                else ("secretKeyRef", self.secrets)
            )
            key_ref = ref[kind]
            value = source.get(key_ref["name"], {}).get(
                key_ref["key"]
            )  # optional: the object may be absent
            assert value is not None or key_ref.get("optional"), f"{name}: {key_ref} is missing"
            if value is not None:
                env[name] = value
        return env

    def start(
        self, pod_spec: dict, index: int, pod_dir: str, **env_changes: str
    ) -> subprocess.Popen:
        """Start the pod's (single) container; ``env_changes`` as the simulated node needs them."""
        (container,) = pod_spec["containers"]
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        node_dir = self.root / pod_dir
        paths = {}
        for mount in container.get("volumeMounts", []):
            vol = volumes[mount["name"]]
            claim = vol.get("persistentVolumeClaim", {}).get("claimName")
            local = self.claims / claim if claim else node_dir / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            for key, text in self.config_maps.get(vol.get("configMap", {}).get("name"), {}).items():
                (local / key).write_text(text)
            paths[mount["mountPath"]] = str(local)
        env = {**self.env(container, index), **env_changes}

        def here(value: str) -> str:
            value = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), value
            )  # Kubernetes $(VAR)
            for cluster_name, local in {**paths, **self.dns}.items():
                value = value.replace(cluster_name, local)
            return value

        command = container.get("command", ["avfusion"])  # the image's ENTRYPOINT
        argv = [here(a) for a in command + container.get("args", [])]
        argv[0] = (
            sys.executable if argv[0] == "python" else str(Path(sys.executable).with_name(argv[0]))
        )
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("PET_", "MLFLOW_", "AWS_"))
        }
        node_dir.mkdir(parents=True, exist_ok=True)
        with open(node_dir / "log.txt", "w") as log:  # the container's log
            proc = subprocess.Popen(
                argv,
                env={**base, **{k: here(v) for k, v in env.items()}},
                cwd=node_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc.log = node_dir / "log.txt"
        return proc


def finish(procs: list[subprocess.Popen], timeout: float = 400) -> list[str]:
    """Wait for every pod; their logs. A failed pod fails the test with its log's tail."""
    for p in procs:
        p.wait(timeout=timeout)
    outputs = [p.log.read_text() for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"{p.args}:\n{out[-4000:]}"
    return outputs


def template_pod(doc: dict) -> dict:
    """The pod spec of a Job or Deployment."""
    return doc["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def sim(cluster):
    root, docs = cluster
    db = {"uri": f"sqlite:///{root}/mlflow.db", "password": "unused-by-sqlite"}
    return Cluster(root, docs, {"avfusion-s3": S3_KEYS, "avfusion-mlflow-db": db})


@pytest.fixture(scope="module")
def mlflow_server(sim):
    """The rendered MLflow Deployment, sqlite standing in for PostgreSQL, on a free local port."""
    pod_spec = copy.deepcopy(template_pod(sim.doc("Deployment", MLFLOW_SERVICE)))
    port = str(free_port())
    args = pod_spec["containers"][0]["args"]
    for flag, value in (
        ("--host", "127.0.0.1"),
        ("--port", port),
        ("--workers", "1"),
    ):  # 1 is enough here
        args[args.index(flag) + 1] = value
    proc = sim.start(pod_spec, 0, "mlflow")
    wait_http(f"http://127.0.0.1:{port}/health", proc, "mlflow server")
    yield f"127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGKILL)  # the server and its uvicorn workers
    proc.wait(timeout=30)


@pytest.mark.parametrize(
    "host,status",
    [
        (f"{MLFLOW_SERVICE}.{NAMESPACE}.svc.cluster.local:{MLFLOW_PORT}", 200),
        (f"{MLFLOW_SERVICE}.{NAMESPACE}.svc:{MLFLOW_PORT}", 200),
        (f"{MLFLOW_SERVICE}:{MLFLOW_PORT}", 200),
        ("localhost:5000", 200),  # kubectl port-forward
        ("mlflow.attacker.example:5000", 403),
    ],
)
def test_mlflow_server_answers_its_service_names_only(mlflow_server, host, status):
    req = urllib.request.Request(
        f"http://{mlflow_server}/api/2.0/mlflow/experiments/search?max_results=1",
        headers={"Host": host},
    )
    try:
        code = urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        code = e.code
    assert code == status


@pytest.fixture(scope="module")
def shard_set(sim):
    """Synthetic videos uploaded; the Indexed Job run (both completion indexes at once), then
    the merge Job."""
    subprocess.run(
        [
            *AVFUSION,
            "synth",
            "--out",
            str(sim.root / "s3" / BUCKET / "videos"),
            "--videos",
            "8",
            "--seconds",
            "3",
            "--classes",
            "2",
            "--seed",
            "0",
            "--workers",
            "2",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    build = sim.doc("Job", f"{NAME}-shards-build")
    finish(
        [
            sim.start(template_pod(build), k, f"build-{k}")
            for k in range(build["spec"]["completions"])
        ]
    )
    finish([sim.start(template_pod(sim.doc("Job", f"{NAME}-shards-merge")), 0, "merge")])
    return sim.root / "s3" / BUCKET


def test_indexed_job_builds_one_slice_per_index_and_merge_joins_them(shard_set):
    parts = [
        json.loads((shard_set / "shards-parts" / f"part-{k}" / "manifest.json").read_text())
        for k in range(2)
    ]
    merged = json.loads((shard_set / "shards" / "manifest.json").read_text())
    assert [p["num_samples"] for p in parts] == [4, 4]  # 8 one-clip videos, contiguous halves
    assert merged["num_samples"] == 8 and merged["num_failed"] == 0
    assert len(merged["shards"]) == sum(len(p["shards"]) for p in parts)


def wait_for_step(proc: subprocess.Popen, step: int, timeout: float = 300) -> None:
    """Until the pod's log (rank 0) reports optimizer step ``step``."""
    deadline = time.time() + timeout
    while not any(int(s) >= step for s in re.findall(r"\bstep (\d+)/", proc.log.read_text())):
        assert proc.poll() is None and time.time() < deadline, proc.log.read_text()[-4000:]
        time.sleep(0.5)


def test_jobset_pods_run_one_distributed_run_that_a_sigterm_stops_and_the_restart_resumes(
    sim, shard_set, mlflow_server
):
    """The JobSet's two pods start one 2-rank run (pod 1 joins pod 0 as node rank 1), tracked
    through the MLflow Deployment, whose artifacts land in the S3 store the manifests name.
    A preemption as the kubelet delivers it (SIGTERM to pod 0's PID 1 only): both pods exit
    143 — pod 1 because its workers stopped at the agreed step — with a complete checkpoint;
    the JobSet's restart (tests/deploy/test_preemption.py: no maxRestarts used) runs the same
    pods again, which resume from it in the same MLflow run."""
    from mlflow.tracking import MlflowClient

    jobset = sim.doc("JobSet", NAME)
    assert jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["completions"] == 2
    pod_spec = copy.deepcopy(node_pod(jobset)[0])
    assert sim.env(pod_spec["containers"][0], 1)["PET_MASTER_PORT"] == "29500"
    args = pod_spec["containers"][0]["args"]
    args += ["optim.epochs=100", "train.max_steps=400"]  # long enough to be stopped mid-way
    sim.dns = {
        f"{NAME}-node-0-0.{NAME}": "127.0.0.1",
        f"http://{MLFLOW_SERVICE}.{NAMESPACE}.svc:{MLFLOW_PORT}": f"http://{mlflow_server}",
    }
    cpu = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}  # CPU nodes

    def start(attempt: str) -> list[subprocess.Popen]:
        port = str(free_port())  # 29500 may be taken on a shared machine
        return [
            sim.start(pod_spec, k, f"{attempt}-{k}", PET_MASTER_PORT=port, **cpu) for k in (0, 1)
        ]

    pods = start("preempted")
    wait_for_step(pods[0], 2)
    pods[0].send_signal(signal.SIGTERM)
    for p in pods:
        p.wait(timeout=300)
    logs = [p.log.read_text() for p in pods]
    assert [p.returncode for p in pods] == [143, 143], logs[0][-3000:] + logs[1][-3000:]
    assert "--node-rank=1" in logs[1] and "--master-addr=127.0.0.1" in logs[1]
    assert "SIGTERM: stopping at the next step boundary with a checkpoint" in logs[0]
    assert "deploy.launch: SIGTERM; exit 143" in logs[0]
    assert "deploy.launch: workers exited [143]; exit 143" in logs[1]
    stopped = int(re.search(r"stopped by a signal at step (\d+)", logs[0])[1])
    run_dir = sim.claims / "avfusion-runs" / NAME  # train.output_dir on the shared claim
    root = run_dir / "checkpoints"
    assert (root / "latest").read_text().strip() == f"step{stopped:08d}"
    assert (root / f"step{stopped:08d}" / "complete.json").is_file()
    client = MlflowClient(f"http://{mlflow_server}")

    def mlflow_run():
        (exp,) = [e for e in client.search_experiments() if e.name == "avfusion-demo"]
        (run,) = client.search_runs([exp.experiment_id])  # one run for both pods
        return run

    run = mlflow_run()
    assert run.info.status == "KILLED"
    assert run.data.params["derived.world_size"] == "2"
    assert run.data.params["train.output_dir"] == str(run_dir)

    args[-1] = f"train.max_steps={stopped + 2}"  # the restarted set, told to finish soon
    logs = finish(start("restarted"))
    assert f"resuming at step {stopped}" in logs[0]
    run = mlflow_run()  # the same run (the only one), finished
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == list(range(1, stopped + 3))  # before the stop, then after it
    # Artifacts went through the server's proxy into the S3 store the manifests name.
    stored = {p.name for p in (shard_set / "mlflow").rglob("*") if p.is_file()}
    assert {"config.yaml", "manifest.json"} <= stored
