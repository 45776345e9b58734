"""Optimizer-step cost of our trainer vs a hand-written PyTorch loop vs the model alone.

Three variants on the same model, batch (already on the device), masks and precision, measured
interleaved in one process:

- ``trainer``: :class:`pipeline.engine.step.TrainStep` on the real DeepSpeed engine built exactly
  as the trainer builds it (generated config, param groups, fused/foreach AdamW);
- ``plain``: forward under autocast (bf16) + backward + ``AdamW(foreach/fused).step()``, no
  DeepSpeed;
- ``model_only``: forward + backward.

``host_syncs_per_step`` counts tensor-to-host conversions (``item``, ``bool``, ``tolist``,
``cpu``, ``numpy``, ``float``/``int``) called from the project's own code (``model/``,
``pipeline/``) during a non-log step; with CUDA, ``cuda_syncs_per_step`` counts every
synchronisation (DeepSpeed's included) with ``torch.cuda.set_sync_debug_mode``. Prints one JSON
line. Default: CPU, ``debug`` preset, fp32, ZeRO 2 and 0.

    python benchmarks/bench_step.py
    python benchmarks/bench_step.py --preset vggsound --precision bf16 --batches 64,128,256 --stages 0,1,2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if "--cpu" in sys.argv:
    os.environ["DS_ACCELERATOR"] = "cpu"

import torch  # noqa: E402

from benchmarks.bench_model import peak_tflops, step_flops  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.engine.distributed import build_engine, init_distributed  # noqa: E402
from pipeline.engine.loop import compile_blocks  # noqa: E402
from pipeline.engine.schedule import build_optimizer  # noqa: E402
from pipeline.engine.step import TrainStep  # noqa: E402
from pipeline.pretrain.trainer import Pretraining  # noqa: E402
from tests.support.hostreads import HostReadCounter  # noqa: E402


def make_batch(model, batch: int, device: torch.device, dtype: torch.dtype) -> dict:
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen).to(
            device, dtype
        ),
        "audio": torch.randn(batch, 1, *cfg.audio_size, generator=gen).to(device, dtype),
        "key": [f"k{i}" for i in range(batch)],
    }


class Variants:
    """The three step functions over copies of one initial model."""

    def __init__(self, cfg, info):
        task = Pretraining(cfg, info)
        model, pretrained = task.model(), task.pretrained
        self.device, self.dtype = info.device, task.dtype
        self.autocast = cfg.train.precision == "bf16"
        self.plain_model = copy.deepcopy(model).to(info.device)
        self.only_model = copy.deepcopy(model).to(info.device)
        self.plain_opt = build_optimizer(self.plain_model, cfg.optim, pretrained, 1e-4, info.device)
        if cfg.train.compile:
            for m in (model, self.plain_model, self.only_model):
                compile_blocks(m, cfg.train.compile_mode)
        engine, _ = build_engine(
            model,
            build_optimizer(model, cfg.optim, pretrained, 1e-4, info.device),
            cfg.engine_spec(),
            1,
        )
        self.step = TrainStep(
            engine,
            task.step,
            task.losses,
            seed=0,
            accum=1,
            rank=0,
            world_size=1,
            device=self.device,
        )
        self.batch = make_batch(model, cfg.data.batch_size, info.device, self.dtype)
        self.index = 0

    def _gen(self):
        self.index += 1
        return torch.Generator(device=self.device).manual_seed(self.index)

    def trainer(self) -> None:
        self.step.micro(self.batch, self.index, 0)
        self.index += 1

    def _forward(self, model):
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            return model(self.batch["image"], self.batch["audio"], generator=self._gen())

    def plain(self) -> None:
        self._forward(self.plain_model).loss.backward()
        self.plain_opt.step()
        self.plain_opt.zero_grad(set_to_none=True)

    def model_only(self) -> None:
        self._forward(self.only_model).loss.backward()
        self.only_model.zero_grad(set_to_none=True)


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls (device work included)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def count_syncs(v: Variants) -> dict:
    """Host reads by our code (and, on CUDA, all device syncs) during one non-log trainer step."""
    with HostReadCounter() as counter:
        v.trainer()
    result = {"host_syncs_per_step": counter.count}
    if v.device.type == "cuda":
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                v.trainer()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        result["cuda_syncs_per_step"] = sum("synchroniz" in str(w.message) for w in caught)
    return result


def measure(cfg, info, steps: int, rounds: int) -> dict:
    v = Variants(cfg, info)
    fns = {"trainer": v.trainer, "plain": v.plain, "model_only": v.model_only}
    for fn in fns.values():  # warm-up (and compilation)
        timed(fn, 2, info.device)
    times = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):  # interleaved, the order rotated every round
        for name in order[r % 3 :] + order[: r % 3]:
            times[name].append(timed(fns[name], steps, info.device))
    step_s = {name: statistics.median(t) for name, t in times.items()}

    def ratio(a: str, b: str) -> float:
        """Median over rounds of the per-round ratio: a drift in machine load between rounds
        (a shared VM) cancels, since both blocks of a round see the same load."""
        return round(statistics.median(x / y for x, y in zip(times[a], times[b], strict=True)), 3)

    row = {
        "device": torch.cuda.get_device_name() if info.device.type == "cuda" else "cpu",
        "preset": cfg.model.preset,
        "batch": cfg.data.batch_size,
        "precision": cfg.train.precision,
        "zero_stage": cfg.train.zero_stage,
        "compile": cfg.train.compile,
        "step_s": {k: round(s, 5) for k, s in step_s.items()},
        "ratio_trainer_vs_plain": ratio("trainer", "plain"),
        "ratio_trainer_vs_model_only": ratio("trainer", "model_only"),
        "samples_per_s": round(cfg.data.batch_size / step_s["trainer"], 1),
        **count_syncs(v),
    }
    if info.device.type == "cuda":
        peak = peak_tflops(None)
        flops, _ = step_flops(cfg.model.preset, cfg.data.batch_size)
        row["mfu"] = round(flops / step_s["trainer"] / (peak * 1e12), 3) if peak else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default="debug", help="model preset (configs/debug.yaml otherwise)"
    )
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--batches", default="8", help="per-device batch sizes, comma-separated")
    parser.add_argument("--stages", default="2,0", help="ZeRO stages, comma-separated")
    parser.add_argument(
        "--compile", action="store_true", help="train.compile=true for all three variants"
    )
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (medians taken)")
    parser.add_argument(
        "--cpu", action="store_true", help="stay on the CPU even when CUDA is present"
    )
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    info = init_distributed()
    runs = []
    for batch in map(int, args.batches.split(",")):
        for stage in map(int, args.stages.split(",")):
            cfg = load_config(
                REPO / "configs" / "debug.yaml",
                [
                    f"model.preset={args.preset}",
                    f"train.precision={args.precision}",
                    f"data.batch_size={batch}",
                    f"train.zero_stage={stage}",
                    f"train.compile={str(args.compile).lower()}",
                    f"train.compile_mode={args.compile_mode}",
                ],
            )
            runs.append(measure(cfg, info, args.steps, args.rounds))
    print(json.dumps({"bench": "step", "runs": runs}))


if __name__ == "__main__":
    main()
