"""deploy.launch: the operator's torch-distributed environment → one torchrun command per node."""

from __future__ import annotations

import sys

import pytest

from deploy.launch import torchrun_argv
from deploy.manifests import COMPLETION_INDEX
from tests.deploy.helpers import IMAGE, VGG, node_pod
from tests.deploy.validators import load_docs

KUBEFLOW_ENV = {
    "PET_NNODES": "4",
    "PET_NPROC_PER_NODE": "8",
    "PET_NODE_RANK": "2",
    "PET_MASTER_ADDR": "run-node-0-0.run",
    "PET_MASTER_PORT": "29500",
}


def test_kubeflow_environment_becomes_torchrun_arguments():
    argv = torchrun_argv(KUBEFLOW_ENV, ["--config", "/etc/avfusion/x.yaml", "optim.epochs=3"])
    assert argv == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=4",
        "--nproc-per-node=8",
        "--node-rank=2",
        "--rdzv-backend=static",
        "--master-addr=run-node-0-0.run",
        "--master-port=29500",
        "-m",
        "pipeline.train",
        "--config",
        "/etc/avfusion/x.yaml",
        "optim.epochs=3",
    ]


def test_node_rank_falls_back_to_the_completion_index_and_port_to_29500():
    env = {k: v for k, v in KUBEFLOW_ENV.items() if k not in ("PET_NODE_RANK", "PET_MASTER_PORT")}
    argv = torchrun_argv({**env, "JOB_COMPLETION_INDEX": "3", "PET_NPROC_PER_NODE": "auto"}, [])
    assert (
        "--node-rank=3" in argv
        and "--master-port=29500" in argv
        and "--nproc-per-node=auto" in argv
    )


@pytest.mark.parametrize(
    "change,message",
    [
        ({"PET_NNODES": None}, "PET_NNODES is not set"),
        ({"PET_NODE_RANK": None}, "PET_NODE_RANK (or JOB_COMPLETION_INDEX) is not set"),
        ({"PET_NODE_RANK": "4"}, "PET_NODE_RANK=4 is not below PET_NNODES=4"),
        ({"PET_NPROC_PER_NODE": "eight"}, "PET_NPROC_PER_NODE='eight': expected an integer >= 1"),
        ({"PET_MASTER_ADDR": ""}, "PET_MASTER_ADDR is not set"),
    ],
)
def test_a_missing_or_bad_variable_is_one_clear_error(change, message):
    env = {**KUBEFLOW_ENV, **change}
    with pytest.raises(SystemExit, match=r"^error: ") as err:
        torchrun_argv({k: v for k, v in env.items() if v is not None}, [])
    assert message in str(err.value)


def kubeflow_injected_env(trainjob: dict, node_rank: int) -> dict[str, str]:
    """What Kubeflow Trainer v2.3's torch plugin adds to container "node" of a TrainJob
    (pkg/runtime/framework/plugins/torch/torch.go): node count, processes per node, rank from
    the completion index, master = pod 0 of the JobSet it creates, port 29500."""
    name, trainer = trainjob["metadata"]["name"], trainjob["spec"]["trainer"]
    return {
        "PET_NNODES": str(trainer["numNodes"]),
        "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": f"{name}-node-0-0.{name}",
        "PET_MASTER_PORT": "29500",
    }


def jobset_env(env: dict[str, dict], node_rank: int) -> dict[str, str]:
    """The JobSet pod's PET_* values; PET_NODE_RANK resolved from the completion index."""
    out = {}
    for name, var in env.items():
        if name.startswith("PET_"):
            ref = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            out[name] = str(node_rank) if ref == COMPLETION_INDEX else var["value"]
    return out


def test_trainjob_and_jobset_pods_launch_the_same_torchrun(render, tmp_path):
    common = [
        "--run-config",
        VGG,
        "--nodes",
        "3",
        "--gpus-per-node",
        "4",
        "--image",
        IMAGE,
        "--name",
        "vgg",
    ]
    (trainjob,) = load_docs(render(*common, out=tmp_path / "tj")["40-train.yaml"])
    (jobset,) = load_docs(
        render(*common, "--launcher", "jobset", out=tmp_path / "js")["40-train.yaml"]
    )
    _, js_args, js_env = node_pod(jobset)
    assert js_args == trainjob["spec"]["trainer"]["args"]
    assert (
        jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][
            0
        ]["command"]
        == trainjob["spec"]["trainer"]["command"]
    )
    for rank in range(3):
        from_kubeflow = torchrun_argv(kubeflow_injected_env(trainjob, rank), js_args)
        assert torchrun_argv(jobset_env(js_env, rank), js_args) == from_kubeflow
        assert f"--node-rank={rank}" in from_kubeflow and "--nnodes=3" in from_kubeflow
