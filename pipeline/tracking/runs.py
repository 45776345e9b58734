"""Compare MLflow runs side by side (the config keys that differ and the final metrics), and send
what a training run could not deliver to its MLflow server.

    avfusion runs compare [--experiment avfusion] [--uri sqlite:///mlruns.db] [--max-runs 10]
    avfusion runs sync OUTPUT_DIR [--uri URI]
"""

from __future__ import annotations

import argparse

from avbase.errors import AvfusionError
from avbase.urls import redact
from pipeline.tracking.pending import PENDING_FILE, first_line, sync
from pipeline.tracking.tracker import client_env, tracking_uri

METRICS = (
    "train/loss",
    "train/loss_image",
    "train/loss_audio",
    "probe/knn_top1",
    "train/samples_per_s",
    "eval/top1_all",
    "eval/map_all",
)
PRETRAIN_TAG = "avfusion.pretrain_run_id"  # set by evaluations (pipeline/eval) on their runs


def compare_table(runs: list, metrics: tuple[str, ...] = METRICS) -> list[list[str]]:
    """Rows: header, then one row per config key whose value differs, then metrics."""
    params = [r.data.params for r in runs]
    keys = sorted({k for p in params for k in p})
    differing = [k for k in keys if len({p.get(k) for p in params}) > 1]
    rows = [
        ["", *[f"{r.info.run_name or ''} ({r.info.run_id[:8]})" for r in runs]],
        ["status", *[r.info.status for r in runs]],
        ["evaluates", *[r.data.tags.get(PRETRAIN_TAG, "-")[:8] for r in runs]],
    ]
    rows += [[k, *[p.get(k, "-") for p in params]] for k in differing]
    rows += [[m, *[_fmt(r.data.metrics.get(m)) for r in runs]] for m in metrics]
    return rows


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def render(rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def run(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    client_env()
    uri = tracking_uri(args.uri)
    client = MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(args.experiment)
        runs = exp and client.search_runs(
            [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=args.max_runs
        )
    except Exception as e:  # noqa: BLE001 — one line (exit 2), whatever the client raised
        raise AvfusionError(f"MLflow at {redact(uri)}: {first_line(e)}") from None
    if exp is None:
        raise AvfusionError(f"experiment {args.experiment!r} not found at {redact(uri)}")
    if not runs:
        raise AvfusionError(f"experiment {args.experiment!r} has no runs")
    print(render(compare_table(runs)))
    return 0


def run_sync(args: argparse.Namespace) -> int:
    client_env()
    try:
        summary = sync(args.output_dir, args.uri)
    except Exception as e:  # noqa: BLE001 — one line; the journal is kept
        raise AvfusionError(
            f"tracking sync of {args.output_dir}: {first_line(e)} (nothing lost; "
            f"{PENDING_FILE} kept)"
        ) from None
    print(summary or f"{args.output_dir}: nothing pending")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("runs", help="inspect MLflow runs")
    sub = p.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    c = sub.add_parser(
        "compare",
        help="config differences and final metrics of recent runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "--experiment", default="avfusion", help="MLflow experiment name (default: avfusion)"
    )
    c.add_argument(
        "--uri",
        default=None,
        help="tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)",
    )
    c.add_argument("--max-runs", type=int, default=10, help="newest N runs (default: 10)")
    c.set_defaults(func=run)
    s = sub.add_parser(
        "sync",
        help="send a run's pending tracking records (tracking_pending.jsonl) to MLflow",
        description="Send what a training run could not deliver to its MLflow server into the same "
        "run (created now if the run never reached the server).",
    )
    s.add_argument("output_dir", help="the run's train.output_dir")
    s.add_argument("--uri", default=None, help="tracking URI (default: the one the run used)")
    s.set_defaults(func=run_sync)
