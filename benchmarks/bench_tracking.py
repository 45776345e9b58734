"""What MLflow tracking costs a training run: none, a healthy server, a hung (SIGSTOPped) server.

`avfusion train` (one process, debug model, CPU, ``train.log_every=1``, ``--steps`` steps) is run
``--repeats`` times per case against a real `mlflow server`:

- ``untracked``: ``tracking.enabled=false`` (the baseline);
- ``healthy``: the server answers;
- ``stopped``: the server is SIGSTOPped before the run starts (it accepts connections and never
  answers) and SIGCONTed after the run ended; ``avfusion runs sync`` then sends the journal.

Reports the median process wall time and step-loop samples/s (from the trainer's own windows) per
case, their ratios vs ``untracked`` measured in the same run, and whether MLflow ended up with
``train/loss`` for every step in exactly one run per tracked process. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.corpus import AVFUSION, synth_shards  # noqa: E402
from tests.support.mlflowserver import start_mlflow_server, stop  # noqa: E402
from tests.support.s3server import free_port  # noqa: E402


def train(shards: Path, out: Path, steps: int, tracking: list[str]) -> dict:
    """One `avfusion train` process: wall seconds, step-loop samples/s (first window excluded), losses."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    cmd = [
        *AVFUSION,
        "train",
        "--config",
        str(REPO / "configs" / "debug.yaml"),
        f"data.shards={shards}",
        "probe.shards=null",
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        "train.log_every=1",
        "train.resume=never",
        "data.batch_size=4",
        *tracking,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"training run failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speed = statistics.mean(
        r["train/samples_per_s"] for r in rows[1:] if "train/samples_per_s" in r
    )
    return {
        "wall_s": wall,
        "samples_per_s": speed,
        "losses": {r["step"]: r["train/loss"] for r in rows if "train/loss" in r},
        "pending_warning": "avfusion runs sync" in proc.stderr,
    }


def complete_in_one_run(uri: str, experiment: str, run_name: str, losses: dict) -> bool:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id],
        f"attributes.run_name = '{run_name}'",
    )
    return len(runs) == 1 and sorted(
        (m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, "train/loss")
    ) == sorted(losses.items())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--shards", type=Path, help="an existing shard set instead of a synthetic one"
    )
    args = parser.parse_args()
    times: dict[str, list[dict]] = {"untracked": [], "healthy": [], "stopped": []}
    complete, warned = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = args.shards or synth_shards(tmp / "corpus")
        port = free_port()
        uri = f"http://127.0.0.1:{port}"
        server = start_mlflow_server(tmp / "mlflow", port)
        try:
            for i in range(args.repeats):
                times["untracked"].append(
                    train(shards, tmp / f"u{i}", args.steps, ["tracking.enabled=false"])
                )
                for case in ("healthy", "stopped"):
                    name = f"{case}{i}"
                    tracking = [
                        f"tracking.uri={uri}",
                        "tracking.experiment=bench",
                        f"tracking.run_name={name}",
                    ]
                    if case == "stopped":
                        os.killpg(server.pid, signal.SIGSTOP)  # the server and its workers
                    try:
                        run = train(shards, tmp / name, args.steps, tracking)
                    finally:
                        os.killpg(server.pid, signal.SIGCONT)
                    if case == "stopped":
                        warned.append(run["pending_warning"])
                        subprocess.run(
                            [*AVFUSION, "runs", "sync", str(tmp / name)],
                            cwd=REPO,
                            check=True,
                            capture_output=True,
                        )
                    times[case].append(run)
                    complete.append(complete_in_one_run(uri, "bench", name, run["losses"]))
        finally:
            stop(server)
    med = {
        case: {
            k: round(statistics.median(r[k] for r in runs), 2) for k in ("wall_s", "samples_per_s")
        }
        for case, runs in times.items()
    }
    base = med["untracked"]
    print(
        json.dumps(
            {
                "bench": "tracking",
                "steps": args.steps,
                "log_every": 1,
                "repeats": args.repeats,
                "model": "debug",
                "device": "cpu",
                "median": med,
                "wall_ratio_vs_untracked": {
                    c: round(m["wall_s"] / base["wall_s"], 3) for c, m in med.items()
                },
                "samples_per_s_ratio_vs_untracked": {
                    c: round(m["samples_per_s"] / base["samples_per_s"], 3) for c, m in med.items()
                },
                "every_step_in_one_run": all(complete),
                "stopped_run_warned_pending": all(warned),
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
