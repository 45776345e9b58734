"""`avfusion deploy render`: every rendered document passes its schema, and the values that make
a run work (sizes, environment, volumes, wiring between objects) are the ones asked for."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from deploy import pod
from tests.deploy.helpers import AS2M, IMAGE, REPO, VGG, containers, env_of, node_pod, render_cli
from tests.deploy.validators import (
    crd_errors,
    is_crd,
    jobset_job_errors,
    kubernetes_validate_cli,
    load_docs,
)

COMBOS = {
    "1x1-trainjob": ["--run-config", VGG, "--nodes", "1", "--gpus-per-node", "1", "--image", IMAGE],
    "2x8-trainjob-shards": [
        "--run-config",
        AS2M,
        "--nodes",
        "2",
        "--gpus-per-node",
        "8",
        "--image",
        IMAGE,
        "--shards-job",
        "--shards-input",
        "s3://my-bucket/as2m.csv",
        "--shards-parts",
        "16",
        "--shards-parallelism",
        "4",
        "--shards-cpu",
        "6",
        "--s3-endpoint",
        "http://minio.storage:9000",
    ],
    "4x4-jobset-shards": [
        "--run-config",
        VGG,
        "--nodes",
        "4",
        "--gpus-per-node",
        "4",
        "--image",
        IMAGE,
        "--launcher",
        "jobset",
        "--shards-job",
        "--shards-input",
        "s3://my-bucket/vgg.csv",
        "--namespace",
        "ml-team",
        "--name",
        "vgg-4x4",
        "optim.epochs=100",
        "train.precision=bf16",
    ],
    "2x1-jobset": [
        "--run-config",
        VGG,
        "--nodes",
        "2",
        "--gpus-per-node",
        "1",
        "--image",
        IMAGE,
        "--launcher",
        "jobset",
        "--cpu",
        "4",
        "--memory",
        "32Gi",
        "--shm-size",
        "8Gi",
    ],
}
SECRET_NAMES = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|STORE_URI")


def all_docs(files) -> list[dict]:
    return [doc for path in files.values() for doc in load_docs(path)]


def by_kind(files, kind: str) -> list[dict]:
    return [d for d in all_docs(files) if d["kind"] == kind]


@pytest.mark.parametrize("combo", COMBOS)
def test_every_rendered_document_passes_schema_validation(render, combo):
    files = render(*COMBOS[combo])
    proc = kubernetes_validate_cli(list(files.values()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in files.values():
        for doc in load_docs(path):
            kn = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
            if is_crd(doc):
                assert f"WARN {path} Couldn't find schema for kind {doc['kind']}" in proc.stdout
                assert crd_errors(doc) == []
                if doc["kind"] in ("JobSet", "TrainingRuntime"):
                    assert jobset_job_errors(doc) == []
            else:
                assert f"INFO {path} passed for resource {kn} against version 1.35" in proc.stdout
    assert "ERROR" not in proc.stdout


def test_base_manifests_validate_on_their_own():
    files = sorted((REPO / "deploy" / "k8s").glob("*.yaml"))
    proc = kubernetes_validate_cli(files)
    assert proc.returncode == 0 and "ERROR" not in proc.stdout, proc.stdout
    crds = [d for f in files for d in load_docs(f) if is_crd(d)]
    assert {d["kind"] for d in crds} == {"TrainJob", "TrainingRuntime", "JobSet"}
    assert all(crd_errors(d) == [] for d in crds)


def test_validators_reject_a_misspelt_field(render, tmp_path):
    files = render(*COMBOS["4x4-jobset-shards"])
    (build,) = load_docs(files["20-shards-build.yaml"])
    build["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(build))
    proc = kubernetes_validate_cli([bad])
    assert proc.returncode != 0 and "imagePullPolicyy" in proc.stdout

    (jobset,) = load_docs(files["40-train.yaml"])
    jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["completion"] = 4
    assert any("completion" in e for e in jobset_job_errors(jobset))
    assert any("completion: unknown field" in e for e in crd_errors(jobset))

    tj_files = render(*COMBOS["1x1-trainjob"], out=tmp_path / "tj")
    (runtime,) = [
        d for d in load_docs(tj_files["00-config.yaml"]) if d["kind"] == "TrainingRuntime"
    ]
    job = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    job["podFailurePolicy"]["rules"][1]["onExitCode"] = job["podFailurePolicy"]["rules"][1].pop(
        "onExitCodes"
    )
    assert any("onExitCode" in e for e in jobset_job_errors(runtime))
    assert any("onExitCode: unknown field" in e for e in crd_errors(runtime))

    trainjob = load_docs(tj_files["40-train.yaml"])[0]
    broken = copy.deepcopy(trainjob)
    broken["spec"]["trainer"]["numNode"] = 2
    assert crd_errors(broken) == [
        "TrainJob.spec.trainer.numNode: unknown field (dropped by the TrainJob model)"
    ]
    trainjob["spec"]["trainer"]["numNodes"] = "2"
    assert "numNodes" in crd_errors(trainjob)[0]


@pytest.mark.parametrize("nodes,gpus", [(1, 1), (3, 8)])
def test_trainjob_asks_for_the_nodes_and_gpus(render, nodes, gpus):
    files = render(
        "--run-config", VGG, "--nodes", str(nodes), "--gpus-per-node", str(gpus), "--image", IMAGE
    )
    (job,) = by_kind(files, "TrainJob")
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (nodes, gpus)
    res = trainer["resourcesPerNode"]
    assert res["limits"][pod.GPU] == res["requests"][pod.GPU] == str(gpus)
    assert res["requests"]["cpu"] == str(8 * gpus) and res["limits"]["memory"] == f"{64 * gpus}Gi"
    assert job["spec"]["runtimeRef"]["name"] == "avfusion-torch"  # tests/deploy/test_preemption.py
    assert trainer["command"] == ["python", "-m", "deploy.launch"]
    # Kubeflow Trainer webhook rules the CRD schema does not carry:
    assert not {e["name"] for e in trainer["env"]} & {
        "PET_NNODES",
        "PET_NPROC_PER_NODE",
        "PET_NODE_RANK",
        "PET_MASTER_ADDR",
        "PET_MASTER_PORT",
    }
    patch = job["spec"]["runtimePatches"][0]
    assert re.fullmatch(
        r"[a-z0-9.-]+\.[a-z]+/[a-z0-9.-]+", patch["manager"]
    )  # domain-prefixed path
    pod_spec, _, _ = node_pod(job)
    assert [c["name"] for c in pod_spec["containers"]] == ["node"] and "env" not in pod_spec[
        "containers"
    ][0]


def test_jobset_sets_the_environment_kubeflow_would_inject(render):
    files = render(*COMBOS["4x4-jobset-shards"])
    (js,) = by_kind(files, "JobSet")
    job = js["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == 4
    assert js["spec"]["network"]["enableDNSHostnames"] is True
    pod_spec, _, env = node_pod(js)
    assert env["PET_NNODES"]["value"] == "4" and env["PET_NPROC_PER_NODE"]["value"] == "4"
    assert env["PET_MASTER_ADDR"]["value"] == "vgg-4x4-node-0-0.vgg-4x4"  # pod 0 of Job 0
    assert env["PET_MASTER_PORT"]["value"] == "29500"
    assert (
        env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert pod_spec["containers"][0]["resources"]["limits"][pod.GPU] == "4"


@pytest.mark.parametrize("combo", ["2x8-trainjob-shards", "2x1-jobset"])
def test_training_pods_get_shm_cache_checkpoints_and_config(render, combo):
    files = render(*COMBOS[combo])
    (train,) = load_docs(files["40-train.yaml"])
    pod_spec, args, env = node_pod(train)
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for c in pod_spec["containers"] for m in c["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts[pod.CACHE_DIR]]["emptyDir"]["sizeLimit"] == "100Gi"
    assert "data.cache_limit_gb=80" in args and f"data.cache_dir={pod.CACHE_DIR}/shards" in args
    assert volumes[mounts[pod.RUNS_DIR]]["persistentVolumeClaim"]["claimName"] == pod.RUNS_CLAIM
    name = train["metadata"]["name"]
    assert f"train.output_dir={pod.RUNS_DIR}/{name}" in args
    # The run config the pods read is the rendered file's text, mounted where --config points.
    config_map = volumes[mounts[pod.CONFIG_DIR]]["configMap"]["name"]
    (cm,) = [d for d in by_kind(files, "ConfigMap") if d["metadata"]["name"] == config_map]
    key = args[args.index("--config") + 1].removeprefix(pod.CONFIG_DIR + "/")
    assert cm["data"][key] == (REPO / "configs" / key).read_text()
    # Secrets and the MLflow URI come from cluster objects, not literals.
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == pod.S3_SECRET
    (env_cm,) = [
        d for d in by_kind(files, "ConfigMap") if d["metadata"]["name"] == pod.ENV_CONFIGMAP
    ]
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]["name"] == pod.ENV_CONFIGMAP
    assert (
        env_cm["data"]["MLFLOW_TRACKING_URI"]
        == f"http://avfusion-mlflow.{train['metadata']['namespace']}.svc:5000"
    )
    assert pod_spec["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("launcher", ["trainjob", "jobset"])
def test_extra_env_reaches_the_training_container_once(render, launcher):
    files = render(
        *COMBOS["1x1-trainjob"],
        "--launcher",
        launcher,
        "--env",
        "NCCL_SOCKET_IFNAME=eth0",
        "--env",
        "NCCL_DEBUG=INFO",
    )
    (train,) = load_docs(files["40-train.yaml"])
    _, _, env = node_pod(train)
    names = [
        e["name"]
        for e in (
            train["spec"]["trainer"]["env"]
            if launcher == "trainjob"
            else node_pod(train)[0]["containers"][0]["env"]
        )
    ]
    assert len(names) == len(set(names))
    assert env["NCCL_SOCKET_IFNAME"] == {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"}
    assert env["NCCL_DEBUG"] == {"name": "NCCL_DEBUG", "value": "INFO"}  # replaces the ConfigMap's


def test_shard_jobs_split_the_list_and_merge_every_part(render):
    files = render(*COMBOS["2x8-trainjob-shards"])
    (build,), (merge,) = (
        load_docs(files["20-shards-build.yaml"]),
        load_docs(files["30-shards-merge.yaml"]),
    )
    spec = build["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 16, 4)
    (c,) = spec["template"]["spec"]["containers"]
    args = c["args"]
    assert args[:3] == ["shards", "build", "s3://my-bucket/as2m.csv"]
    assert (
        args[args.index("--out") + 1] == "s3://my-bucket/audioset2m/shards-parts/part-$(PART_INDEX)"
    )
    assert (
        args[args.index("--num-parts") + 1] == "16"
        and args[args.index("--part-index") + 1] == "$(PART_INDEX)"
    )
    assert env_of(c)["PART_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"].endswith(
        "job-completion-index']"
    )
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert args[args.index("--workers") + 1] == c["resources"]["requests"]["cpu"] == "6"
    margs = merge["spec"]["template"]["spec"]["containers"][0]["args"]
    parts = [f"s3://my-bucket/audioset2m/shards-parts/part-{k}" for k in range(16)]
    assert margs == ["shards", "merge", *parts, "--out", "s3://my-bucket/audioset2m/shards"]


@pytest.mark.parametrize("combo", COMBOS)
def test_no_literal_secrets_and_every_variable_reference_resolves(render, combo):
    docs = all_docs(render(*COMBOS[combo]))
    assert "Secret" not in {d["kind"] for d in docs}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            assert not any(SECRET_NAMES.search(k) for k in doc["data"]), doc["metadata"]["name"]
        envs = [env_of(c) for c in containers(doc)]
        if doc["kind"] == "TrainJob":
            envs.append(env_of(doc["spec"]["trainer"]))
        for env in envs:
            for name, var in env.items():
                if SECRET_NAMES.search(name):
                    assert "secretKeyRef" in var.get("valueFrom", {}), f"{doc['kind']}: {name}"
        for c in containers(doc):
            defined = set(env_of(c))
            for ref in re.findall(
                r"\$\((\w+)\)", " ".join(c.get("command", []) + c.get("args", []))
            ):
                assert ref in defined, f"{doc['kind']}/{c['name']}: $({ref}) is not in its env"


def test_mlflow_is_reachable_inside_the_cluster_only(render):
    files = render(*COMBOS["4x4-jobset-shards"])
    docs = all_docs(files)
    assert "Ingress" not in {d["kind"] for d in docs}
    assert {d["spec"]["type"] for d in by_kind(files, "Service")} == {"ClusterIP"}
    (server,) = [
        d for d in by_kind(files, "Deployment") if d["metadata"]["name"] == "avfusion-mlflow"
    ]
    (c,) = server["spec"]["template"]["spec"]["containers"]
    assert c["image"] == IMAGE and c["command"] == ["mlflow", "server"]
    assert c["args"][c["args"].index("--artifacts-destination") + 1] == "s3://my-bucket/mlflow"
    assert env_of(c)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": pod.DB_SECRET,
        "key": "uri",
    }
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(files, "NetworkPolicy")}
    assert policies["avfusion-mlflow"]["ingress"] == [
        {"from": [{"podSelector": {}}], "ports": [{"port": 5000}]}
    ]
    assert all(d["metadata"]["namespace"] == "ml-team" for d in docs)


def test_render_is_deterministic(render, tmp_path):
    first = render(*COMBOS["2x8-trainjob-shards"], out=tmp_path / "a")
    second = render(*COMBOS["2x8-trainjob-shards"], out=tmp_path / "b")
    assert list(first) == [
        "00-config.yaml",
        "10-mlflow.yaml",
        "20-shards-build.yaml",
        "30-shards-merge.yaml",
        "40-train.yaml",
    ]
    assert all(first[n].read_bytes() == second[n].read_bytes() for n in first)
    assert not list((tmp_path / "a").glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--run-config": "missing.yaml"}, "missing.yaml: run config not found"),
        ({"--nodes": "0"}, "--nodes: expected >= 1"),
        ({"--name": "Bad_Name"}, "--name 'Bad_Name'"),
        ({"--memory": "lots"}, "--memory 'lots': expected a quantity"),
        ({"--shards-job": None}, "--shards-job: expected --shards-input"),
        ({"--image": "a b"}, "--image 'a b'"),
        ({"override": "optim.epochs"}, "override 'optim.epochs': expected key=value"),
        (
            {"--env": "AWS_SECRET_ACCESS_KEY=x"},
            "--env AWS_SECRET_ACCESS_KEY: looks like a secret; put it in a Secret",
        ),
        ({"--env": "PET_NNODES=3"}, "PET_* variables are set by the launcher"),
        ({"--env": "NCCL_DEBUG"}, "--env 'NCCL_DEBUG': expected NAME=VALUE"),
        ({"--grace-seconds": "6"}, "--grace-seconds 6: not even one checkpoint save fits"),
    ],
)
def test_unusable_input_is_one_clear_error_and_writes_nothing(tmp_path, change, message):
    argv = dict(zip(COMBOS["1x1-trainjob"][::2], COMBOS["1x1-trainjob"][1::2], strict=True))
    change = dict(change)
    extra = [change.pop("override")] if "override" in change else []
    argv.update(change)
    flat = [x for k, v in argv.items() for x in ([k] if v is None else [k, v])]
    with pytest.raises(SystemExit) as err:
        render_cli([*flat, *extra, "--out", str(tmp_path / "out")])
    assert str(err.value).startswith("error: ") and message in str(err.value)
    assert not (tmp_path / "out").exists()


def test_shard_job_needs_a_shared_shard_location(tmp_path):
    local = tmp_path / "local.yaml"
    local.write_text("data:\n  shards: /data/shards\n")
    with pytest.raises(SystemExit, match="data.shards must be an s3:// URL for --shards-job"):
        render_cli(
            [
                "--run-config",
                str(local),
                "--nodes",
                "1",
                "--gpus-per-node",
                "1",
                "--image",
                IMAGE,
                "--mlflow-artifacts",
                "s3://b/mlflow",
                "--shards-job",
                "--shards-input",
                "l.csv",
            ]
        )
    with pytest.raises(
        SystemExit, match="--mlflow-artifacts: required when .*local.yaml: data.shards"
    ):
        render_cli(
            ["--run-config", str(local), "--nodes", "1", "--gpus-per-node", "1", "--image", IMAGE]
        )


@pytest.mark.parametrize("launcher,how", [("trainjob", "run config"), ("jobset", "overrides")])
def test_compiled_bf16_training_renders_valid_manifests_that_carry_the_setting(
    render, tmp_path, launcher, how
):
    """docs/DEPLOY.md's compiled bf16 run, set in the run config or as overrides, reaches the pods."""
    tree = yaml.safe_load((REPO / "configs" / "vggsound.yaml").read_text())
    overrides = ["train.compile=true", "train.precision=bf16"]
    if how == "run config":
        tree["train"].update(compile=True, precision="bf16")
        overrides = []
    config = tmp_path / "vggsound-compiled.yaml"
    config.write_text(yaml.safe_dump(tree, sort_keys=False))
    files = render(
        "--run-config",
        str(config),
        "--nodes",
        "2",
        "--gpus-per-node",
        "8",
        "--image",
        IMAGE,
        "--launcher",
        launcher,
        *overrides,
    )
    proc = kubernetes_validate_cli(list(files.values()))
    assert proc.returncode == 0 and "ERROR" not in proc.stdout, proc.stdout + proc.stderr
    (train,) = load_docs(files["40-train.yaml"])
    assert crd_errors(train) == [] and (launcher == "trainjob" or jobset_job_errors(train) == [])
    _, args, _ = node_pod(train)
    (cm,) = [d for d in by_kind(files, "ConfigMap") if config.name in d["data"]]
    mounted = yaml.safe_load(cm["data"][config.name])["train"]
    assert args[args.index("--config") + 1] == f"{pod.CONFIG_DIR}/{config.name}"
    assert (
        args[-len(overrides) :] == overrides
        if overrides
        else (mounted["compile"], mounted["precision"]) == (True, "bf16")
    )
    assert not any(
        a.startswith(("train.compile=", "train.precision="))
        for a in args[: len(args) - len(overrides)]
    )


SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(
    "change",
    [
        {"--s3-endpoint": f"http://AKIAEXAMPLE:{SECRET}@minio.storage:9000"},
        {"--mlflow-artifacts": f"s3://AKIAEXAMPLE:{SECRET}@my-bucket/mlflow"},
        {"override": f"tracking.uri=http://user:{SECRET}@mlflow.example.com"},
        {"--env": f"HTTPS_PROXY=http://user:{SECRET}@proxy:3128"},
        {"run-config": f"tracking:\n  uri: https://user:{SECRET}@mlflow.example.com\n"},
        {
            "--shards-job": None,
            "--shards-input": f"https://h.example.com/l.csv?X-Amz-Signature={SECRET}&X-Amz-Expires=60",
        },
        {"override": f"data.shards=https://h.example.com/s?X-Amz-Credential=AKIA%2F{SECRET}"},
    ],
)
def test_credentialed_urls_are_refused_like_env_secrets_without_echoing_them(tmp_path, change):
    argv = dict(zip(COMBOS["1x1-trainjob"][::2], COMBOS["1x1-trainjob"][1::2], strict=True))
    change = dict(change)
    extra = [change.pop("override")] if "override" in change else []
    if "run-config" in change:
        config = tmp_path / "run.yaml"
        config.write_text(
            (REPO / "configs" / "vggsound.yaml").read_text() + change.pop("run-config")
        )
        argv["--run-config"] = str(config)
    argv.update(change)
    flat = [x for k, v in argv.items() for x in ([k] if v is None else [k, v])]
    with pytest.raises(SystemExit) as err:
        render_cli([*flat, *extra, "--out", str(tmp_path / "out")])
    assert str(err.value).startswith(
        "error: "
    ) and "a URL with credentials looks like a secret; put it in a Secret" in str(err.value)
    assert SECRET not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_urls_without_credentials_render(render):
    files = render(
        *COMBOS["1x1-trainjob"],
        "--s3-endpoint",
        "https://minio.example.com:9000",
        "tracking.uri=http://mlflow.example.com:5000/?designer=x",
        "--env",
        "HTTPS_PROXY=http://proxy:3128",
    )
    assert "https://minio.example.com:9000" in files["00-config.yaml"].read_text()


def test_render_refuses_exactly_the_urls_that_redaction_masks():
    """deploy's own check (it imports nothing of ours) agrees with avbase.urls.redact."""
    from avbase.urls import redact
    from deploy.render import CREDENTIAL_URL
    from tests.preprocess.test_urls import CLEAN, CREDENTIALED

    for url, _ in CREDENTIALED:
        assert CREDENTIAL_URL.search(url) and redact(url) != url, url
    for text in CLEAN:
        assert not CREDENTIAL_URL.search(text) and redact(text) == text, text
