"""Training throughput per ZeRO stage (2 CPU ranks, debug model) and time spent waiting for data.

Builds a small synthetic shard set, runs `deepspeed --num_gpus 2 --module pipeline.train` once per
ZeRO stage, and reads the trainer's own metrics (samples/s and data-wait fraction, first window
excluded as warm-up). Ratios are against ZeRO-0 measured in the same run. With CUDA, adds one
single-GPU run of the `vggsound` preset in bf16: samples/s and model FLOPs utilisation.
Prints one JSON line.
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

from tests.pipeline.helpers import free_port, synth_shards  # noqa: E402

H100_BF16_DENSE_FLOPS = 989e12


def launch(shards: Path, out: Path, stage: int, steps: int, extra: list[str], cuda: bool = False) -> dict:
    """One run; CPU runs use 2 gloo ranks, the CUDA run one GPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    gpus = 2
    if cuda:
        env.pop("DS_ACCELERATOR")
        gpus = 1
    cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", str(gpus),
           "--master_port", str(free_port()), "--module", "pipeline.train",
           "--config", str(REPO / "configs" / "debug.yaml"),
           f"data.shards={shards}", f"train.output_dir={out}", f"train.zero_stage={stage}",
           f"train.max_steps={steps}", "train.log_every=4", "probe.shards=null", "train.resume=never",
           f"tracking.uri=sqlite:///{out}/mlruns.db", "tracking.system_metrics=false",
           "optim.epochs=1000", *extra]
    subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/samples_per_s" in r][1:]  # drop the warm-up window
    samples_per_s = statistics.mean(r["train/samples_per_s"] for r in rows)
    config = yaml.safe_load((out / "config.yaml").read_text())
    step_samples = config["data"]["batch_size"] * gpus
    return {"steps_per_s": round(samples_per_s / step_samples, 3), "samples_per_s": round(samples_per_s, 2),
            "data_wait_frac": round(statistics.mean(r["train/data_wait_frac"] for r in rows), 3)}


def model_flops_per_sample(preset: str) -> float:
    """Forward+backward FLOPs of one masked AVMAE sample (3 × forward, counted by torch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from model import build_avmae

    model = build_avmae(preset)
    cfg = model.config
    image = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    audio = torch.randn(1, 1, *cfg.audio_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image, audio)
    return 3.0 * counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--stages", default="0,1,2,3")
    args = parser.parse_args()
    result = {"bench": "train", "world_size": 2, "device": "cpu", "model": "debug", "zero": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = synth_shards(tmp / "corpus", videos=32, seconds=4.0, classes=4)
        for stage in map(int, args.stages.split(",")):
            result["zero"][str(stage)] = launch(shards, tmp / f"zero{stage}", stage, args.steps, [])
        base = result["zero"][args.stages.split(",")[0]]["samples_per_s"]
        result["steps_per_s_ratio_vs_first_stage"] = {
            k: round(v["samples_per_s"] / base, 3) for k, v in result["zero"].items()}
        import torch

        if torch.cuda.is_available():
            gpu = launch(shards, tmp / "gpu", 2, 30,
                         ["model.preset=vggsound", "train.precision=bf16", "data.batch_size=64",
                          "data.workers=8"], cuda=True)
            flops = model_flops_per_sample("vggsound")
            gpu["mfu_bf16"] = gpu["samples_per_s"] * flops / H100_BF16_DENSE_FLOPS
            gpu["device"] = torch.cuda.get_device_name()
            result["gpu_vggsound"] = gpu
    print(json.dumps(result))


if __name__ == "__main__":
    main()
