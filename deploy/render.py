"""``avfusion deploy render``: the Kubernetes manifests for one run, written to a directory.

The run config is read as YAML only (deploy imports nothing from the project): its text goes
into a ConfigMap the pods mount, ``data.shards`` locates the shard set, ``tracking.experiment``
annotates the objects. Unusable input → one ``error:`` line before anything is written.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

import yaml

from deploy import preemption
from deploy.manifests import LAUNCHERS, Run, render_run

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL", re.I)
# A URL with userinfo or a parameter that authorises a request (pre-signed S3/GCS/Azure/CloudFront
# URLs, tokens). NOTE: deploy imports nothing of ours (DESIGN), so this is its own check of the
# kinds avbase/urls.py redacts; tests/deploy/test_render.py holds the two to the same table.
CREDENTIAL_URL = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s'\"]*@"
    r"|[?&]([^=&#\s]*(signature|credential|token|secret|passw(or)?d|api[-_]?key|access[-_]?key)"
    r"[^=&#\s]*|sig|key|auth|policy|key-pair-id)=",
    re.I,
)
SECRET_ADVICE = (
    "looks like a secret; put it in a Secret, not in a manifest (docs/DEPLOY.md, section 2)"
)
MAX_NAME = 40  # pod hostnames <name>-node-0-<k> and Job names must stay DNS labels


def register(subparsers: argparse._SubParsersAction) -> None:
    deploy = subparsers.add_parser(
        "deploy",
        help="Kubernetes manifests for cluster runs",
        description="Kubernetes deployment helpers (docs/DEPLOY.md).",
    )
    sub = deploy.add_subparsers(dest="deploy_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "render",
        help="write the manifests of one run to a directory",
        description="Render the Kubernetes manifests of one run: cluster settings, the run "
        "config and the TrainJob's runtime (00), the MLflow server (10), optionally the "
        "parallel shard build and merge Jobs (20, 30), and the multi-node training job (40: a "
        "Kubeflow TrainJob, or a JobSet with --launcher jobset). Apply them in file order.",
    )
    p.add_argument(
        "--run-config",
        required=True,
        type=Path,
        metavar="YAML",
        help="training config, e.g. configs/vggsound.yaml (mounted into the pods)",
    )
    p.add_argument("--nodes", required=True, type=int, metavar="N", help="training nodes (pods)")
    p.add_argument(
        "--gpus-per-node", required=True, type=int, metavar="G", help="GPUs (processes) per node"
    )
    p.add_argument("--image", required=True, help="image built from the Dockerfile, pushed")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides passed to pipeline.train, e.g. optim.epochs=100",
    )
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="output directory (default: out/k8s/<name>)"
    )
    p.add_argument("--name", help="run name: object names, checkpoint dir (default: config stem)")
    p.add_argument(
        "--namespace", default="avfusion", help="Kubernetes namespace (default: %(default)s)"
    )
    p.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="trainjob",
        help="trainjob: Kubeflow Trainer v2; jobset: JobSet only (default: %(default)s)",
    )
    p.add_argument("--cpu", help="CPU request per node (default: 8 per GPU)")
    p.add_argument("--memory", help="memory per node, includes /dev/shm (default: 64Gi per GPU)")
    p.add_argument(
        "--shm-size", default="16Gi", help="memory-backed /dev/shm (default: %(default)s)"
    )
    p.add_argument(
        "--cache-gb",
        type=int,
        default=100,
        help="node-local shard cache volume in GiB (default: %(default)s)",
    )
    p.add_argument(
        "--grace-seconds",
        type=int,
        default=preemption.DEFAULT_GRACE_S,
        metavar="S",
        help="terminationGracePeriodSeconds of the training pods: after SIGTERM they stop at a "
        "step boundary, save a checkpoint and exit 143 (default: %(default)s, derived in "
        "docs/DEPLOY.md)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for training pods, e.g. NCCL_SOCKET_IFNAME=eth0 "
        "(repeatable; secrets belong in Secrets, not here)",
    )
    p.add_argument(
        "--s3-endpoint", metavar="URL", help="S3 endpoint URL for non-AWS stores (MinIO, Ceph, ...)"
    )
    p.add_argument(
        "--mlflow-artifacts",
        metavar="S3_URL",
        help="MLflow artifact store (default: s3://<bucket of data.shards>/mlflow)",
    )
    g = p.add_argument_group("shard building (--shards-job)")
    g.add_argument(
        "--shards-job",
        action="store_true",
        help="also render the Indexed Job building data.shards and the merge Job",
    )
    g.add_argument("--shards-input", metavar="LIST", help="input list (.txt/.csv, e.g. on S3)")
    g.add_argument(
        "--shards-parts",
        type=int,
        default=8,
        metavar="K",
        help="slices = completions (default: %(default)s)",
    )
    g.add_argument(
        "--shards-parallelism", type=int, metavar="P", help="pods at once (default: all parts)"
    )
    g.add_argument(
        "--shards-cpu",
        type=int,
        default=4,
        metavar="C",
        help="CPUs (= decode workers) per build pod (default: %(default)s)",
    )
    p.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    run = build_run(args)
    out = args.out or Path("out") / "k8s" / run.name
    files = render_run(run)
    write_manifests(files, out)
    for name, docs in files.items():
        kinds = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        print(f"{out / name}: {kinds}")
    print(f"apply in order: kubectl apply -f {out}/<file> (docs/DEPLOY.md)")
    return 0


def _fail(message: str) -> SystemExit:
    return SystemExit(f"error: {message}")


def read_run_config(path: Path) -> tuple[str, dict]:
    try:
        text = path.read_text()
        tree = yaml.safe_load(text) or {}
    except FileNotFoundError:
        raise _fail(f"{path}: run config not found") from None
    except OSError as e:
        raise _fail(f"{path}: cannot read the run config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise _fail(f"{path}: not valid YAML ({e})") from None
    if not isinstance(tree, dict) or not all(
        isinstance(tree.get(s, {}), dict) for s in ("data", "tracking")
    ):
        raise _fail(f"{path}: expected a mapping with sections like data:, tracking:")
    return text, tree


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise _fail(message)


def first_set(shards) -> str:
    """The (first) shard set's path of ``data.shards``: a path, or a mixture's list of paths /
    ``{path, weight}`` items (the first set names the bucket of the default artifact store)."""
    if isinstance(shards, list):
        shards = shards[0] if shards else ""
        shards = shards.get("path", "") if isinstance(shards, dict) else shards
    return str(shards or "")


def build_run(args: argparse.Namespace) -> Run:
    """Validate the command line and the run config into a ``Run``."""
    text, tree = read_run_config(args.run_config)
    listed = tree.get("data", {}).get("shards")
    shards = first_set(listed)
    _check(
        not (args.shards_job and isinstance(listed, list)),
        f"{args.run_config}: data.shards lists several sets; --shards-job builds one",
    )
    name = args.name or re.sub(r"[^a-z0-9-]+", "-", args.run_config.stem.lower()).strip("-")
    _check(
        bool(DNS_LABEL.match(name)) and len(name) <= MAX_NAME,
        f"--name {name!r}: expected lowercase letters, digits and '-', at most {MAX_NAME} chars",
    )
    _check(
        bool(DNS_LABEL.match(args.namespace)), f"--namespace {args.namespace!r}: not a DNS label"
    )
    _check(args.nodes >= 1, f"--nodes: expected >= 1, got {args.nodes}")
    _check(args.gpus_per_node >= 1, f"--gpus-per-node: expected >= 1, got {args.gpus_per_node}")
    _check(
        bool(args.image.strip()) and not re.search(r"\s", args.image),
        f"--image {args.image!r}: expected an image reference like registry/avfusion:tag",
    )
    _check(
        bool(shards), f"{args.run_config}: data.shards is empty; set the shard set the pods read"
    )
    _check(
        bool(re.fullmatch(r"[-._a-zA-Z0-9]+", args.run_config.name)),
        f"--run-config {args.run_config}: the file name becomes a ConfigMap key; "
        "use letters, digits, '-', '_' and '.'",
    )
    _check(args.cache_gb >= 1, f"--cache-gb: expected >= 1, got {args.cache_gb}")
    grace = preemption.grace_problem(args.grace_seconds)
    _check(grace is None, grace or "")
    cpu = args.cpu or str(8 * args.gpus_per_node)
    memory = args.memory or f"{64 * args.gpus_per_node}Gi"
    for flag, value in (("--cpu", cpu), ("--memory", memory), ("--shm-size", args.shm_size)):
        _check(
            bool(QUANTITY.match(value)), f"{flag} {value!r}: expected a quantity like 8, 500m, 64Gi"
        )
    for item in args.overrides:
        key, sep, _ = item.partition("=")
        _check(
            bool(sep and key.strip()),
            f"override {item!r}: expected key=value, e.g. optim.epochs=100",
        )
    _refuse_credential_urls(args, text)
    return Run(
        name=name,
        namespace=args.namespace,
        image=args.image,
        config_name=args.run_config.name,
        config_text=text,
        experiment=str(tree.get("tracking", {}).get("experiment") or "avfusion"),
        shards=shards,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpu=cpu,
        memory=memory,
        shm_size=args.shm_size,
        cache_gb=args.cache_gb,
        overrides=tuple(args.overrides),
        extra_env=_extra_env(args.env),
        launcher=args.launcher,
        grace_seconds=args.grace_seconds,
        mlflow_artifacts=_mlflow_artifacts(args, shards),
        s3_endpoint=args.s3_endpoint,
        **_shards_fields(args, shards),
    )


def _refuse_credential_urls(args: argparse.Namespace, config_text: str) -> None:
    """Everything that lands in a ConfigMap or in pod args, checked without echoing the value."""
    places = {
        str(args.run_config): config_text,
        "--s3-endpoint": args.s3_endpoint,
        "--mlflow-artifacts": args.mlflow_artifacts,
        "--shards-input": args.shards_input,
        **{f"override {item.partition('=')[0]}": item for item in args.overrides},
        **{f"--env {item.partition('=')[0]}": item for item in args.env},
    }
    for where, value in places.items():
        _check(
            not CREDENTIAL_URL.search(value or ""),
            f"{where}: a URL with credentials {SECRET_ADVICE}",
        )


def _extra_env(items: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = tuple(tuple(item.split("=", 1)) for item in items)
    for item, pair in zip(items, pairs, strict=True):
        _check(
            len(pair) == 2 and bool(ENV_NAME.match(pair[0])),
            f"--env {item!r}: expected NAME=VALUE, e.g. NCCL_SOCKET_IFNAME=eth0",
        )
        _check(
            not pair[0].startswith("PET_"),
            f"--env {item!r}: PET_* variables are set by the launcher",
        )
        _check(not SECRET_NAME.search(pair[0]), f"--env {pair[0]}: {SECRET_ADVICE}")
    return pairs


def _mlflow_artifacts(args: argparse.Namespace, shards: str) -> str:
    if args.mlflow_artifacts:
        _check(
            args.mlflow_artifacts.startswith("s3://"),
            f"--mlflow-artifacts {args.mlflow_artifacts!r}: expected s3://bucket/prefix",
        )
        return args.mlflow_artifacts
    _check(
        shards.startswith("s3://"),
        f"--mlflow-artifacts: required when {args.run_config}: data.shards is not an s3:// URL",
    )
    return f"s3://{shards[5:].split('/', 1)[0]}/mlflow"


def _shards_fields(args: argparse.Namespace, shards: str) -> dict:
    if not args.shards_job:
        return {}
    _check(bool(args.shards_input), "--shards-job: expected --shards-input LIST (.txt/.csv)")
    _check(
        shards.startswith("s3://"),
        f"{args.run_config}: data.shards must be an s3:// URL "
        f"for --shards-job (the build pods share no filesystem), got {shards!r}",
    )
    _check(args.shards_parts >= 1, f"--shards-parts: expected >= 1, got {args.shards_parts}")
    parallelism = args.shards_parallelism or args.shards_parts
    _check(parallelism >= 1, f"--shards-parallelism: expected >= 1, got {parallelism}")
    _check(args.shards_cpu >= 1, f"--shards-cpu: expected >= 1, got {args.shards_cpu}")
    return {
        "shards_input": args.shards_input,
        "shards_parts": args.shards_parts,
        "shards_parallelism": parallelism,
        "shards_cpu": str(args.shards_cpu),
    }


class _Dumper(yaml.SafeDumper):
    """Block-style multi-line strings (the embedded run config), no anchors/aliases."""

    def ignore_aliases(self, data: object) -> bool:
        return True


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def dump(docs: list[dict]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=100)


def write_manifests(files: dict[str, list[dict]], out: Path) -> None:
    """Each file written to a temporary name, then renamed: never half a manifest."""
    out.mkdir(parents=True, exist_ok=True)
    for name, docs in files.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
        try:
            with os.fdopen(fd, "w") as f:
                f.write("# Rendered by `avfusion deploy render`; re-render instead of editing.\n")
                f.write(dump(docs))
            os.chmod(tmp, 0o644)
            os.replace(tmp, out / name)
        except BaseException:
            os.unlink(tmp)
            raise
