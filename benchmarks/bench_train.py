"""Training throughput per ZeRO stage (2 CPU ranks, debug model) and time spent waiting for data.

Builds a small synthetic shard set (or takes ``--shards``), runs `deepspeed --num_gpus 2 --module
pipeline.train` once per ZeRO stage, and reads the trainer's own metrics (samples/s and data-wait
fraction, first window excluded as warm-up). Ratios are against the first stage measured in the
same run. With CUDA, adds single-GPU runs of the `vggsound` preset in bf16 (the shard set tiled to
``--gpu-samples``): samples/s and model FLOPs utilisation per ZeRO stage and batch size.
Prints one JSON line. On a machine without PyAV pass ``--shards`` (built elsewhere) and
``--stages ''`` to run the GPU part only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avbase.shardformat import MANIFEST  # noqa: E402
from benchmarks.tiling import tile  # noqa: E402
from tests.support.corpus import synth_shards  # noqa: E402
from tests.support.s3server import free_port  # noqa: E402

H100_BF16_DENSE_FLOPS = 989e12


def launch(
    shards: Path, out: Path, stage: int, steps: int, extra: list[str], cuda: bool = False
) -> dict:
    """One run; CPU runs use 2 gloo ranks, the CUDA run one GPU."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "DS_ACCELERATOR": "cpu"}
    gpus = 2
    if cuda:
        env.pop("DS_ACCELERATOR")
        gpus = 1
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(gpus),
        "--master_port",
        str(free_port()),
        "--module",
        "pipeline.train",
        "--config",
        str(REPO / "configs" / "debug.yaml"),
        f"data.shards={shards}",
        f"train.output_dir={out}",
        f"train.zero_stage={stage}",
        f"train.max_steps={steps}",
        "train.log_every=4",
        "probe.shards=null",
        "train.resume=never",
        "tracking.enabled=false",
        "optim.epochs=1000",
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(
            f"training run failed ({' '.join(cmd[3:])}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/samples_per_s" in r][1:]  # drop the warm-up window
    samples_per_s = statistics.mean(r["train/samples_per_s"] for r in rows)
    config = yaml.safe_load((out / "config.yaml").read_text())
    step_samples = config["data"]["batch_size"] * gpus
    return {
        "steps_per_s": round(samples_per_s / step_samples, 3),
        "samples_per_s": round(samples_per_s, 2),
        "data_wait_frac": round(statistics.mean(r["train/data_wait_frac"] for r in rows), 3),
    }


def model_flops_per_sample(preset: str) -> float:
    """Forward+backward FLOPs of one masked AVMAE sample (3 × forward, counted by torch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from model import build_avmae

    model = build_avmae(preset)
    cfg = model.config
    image = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    audio = torch.randn(1, 1, *cfg.audio_size)
    with FlopCounterMode(
        display=False
    ) as counter:  # NOTE: not under no_grad (torch 2.11 module tracker fails)
        model(image, audio)
    return 3.0 * counter.get_total_flops()


def cpu_stages(shards: Path, tmp: Path, stages: list[int], steps: int) -> dict:
    """2 CPU ranks of the debug model, one run per ZeRO stage."""
    zero = {str(s): launch(shards, tmp / f"zero{s}", s, steps, []) for s in stages}
    base = zero[str(stages[0])]["samples_per_s"]
    return {
        "zero": zero,
        "steps_per_s_ratio_vs_first_stage": {
            k: round(v["samples_per_s"] / base, 3) for k, v in zero.items()
        },
    }


def gpu_runs(
    shards: Path, tmp: Path, samples: int, runs: list[tuple[int, int]], steps: int
) -> dict:
    """One GPU, vggsound preset, bf16, 8 loader workers: one run per (ZeRO stage, batch size)."""
    import torch

    tile(shards, json.loads((shards / MANIFEST).read_text()), tmp / "tiled", samples, 256)
    flops = model_flops_per_sample("vggsound")
    results = {}
    for stage, batch in runs:
        run = launch(
            tmp / "tiled",
            tmp / f"gpu{stage}-{batch}",
            stage,
            steps,
            [
                "model.preset=vggsound",
                "train.precision=bf16",
                f"data.batch_size={batch}",
                "data.workers=8",
            ],
            cuda=True,
        )
        run["mfu_bf16"] = round(run["samples_per_s"] * flops / H100_BF16_DENSE_FLOPS, 4)
        results[f"zero{stage}_batch{batch}"] = run
    return {
        "device": torch.cuda.get_device_name(),
        "preset": "vggsound",
        "precision": "bf16",
        "samples_per_epoch": samples,
        "runs": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per CPU run")
    parser.add_argument(
        "--stages", default="0,1,2,3", help="ZeRO stages of the CPU runs ('' = none)"
    )
    parser.add_argument(
        "--shards", type=Path, help="an existing shard set instead of a synthetic one"
    )
    parser.add_argument(
        "--gpu-samples", type=int, default=2048, help="tiled shard set size for GPU runs"
    )
    parser.add_argument(
        "--gpu-runs",
        default="2:64,2:128",
        help="GPU runs as ZERO_STAGE:PER_GPU_BATCH, comma-separated",
    )
    parser.add_argument("--gpu-steps", type=int, default=40)
    args = parser.parse_args()
    stages = [int(s) for s in args.stages.split(",") if s]
    result = {"bench": "train"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = args.shards or synth_shards(tmp / "corpus", videos=32, seconds=4.0, classes=4)
        if stages:
            result.update(
                world_size=2,
                device="cpu",
                model="debug",
                **cpu_stages(shards, tmp, stages, args.steps),
            )
        import torch

        if torch.cuda.is_available():
            runs = [tuple(map(int, r.split(":"))) for r in args.gpu_runs.split(",")]
            result["gpu_vggsound"] = gpu_runs(shards, tmp, args.gpu_samples, runs, args.gpu_steps)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
