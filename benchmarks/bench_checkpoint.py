"""Checkpoint save time and size: what a preemption's final save costs.

Builds the training state of one preset exactly as the engine does (the model from the preset,
the project's AdamW param groups, the DeepSpeed engine from the generated config at the preset
config's precision and ZeRO stage; a single-process gloo group on the CPU), takes optimizer steps
until AdamW has its moment estimates, then times
:meth:`pipeline.engine.checkpoint.Checkpointer.save` — the finite-weights check, DeepSpeed's
model and optimizer files, the client state and the ``complete.json`` marker — into a local
folder, ``--repeats`` times. ``save_s`` is what the engine waits for (the files are in the page
cache); ``save_sync_s`` adds ``os.sync()``, the time until they are on the disk. Prints one JSON
line; docs/DEPLOY.md derives the manifests' ``terminationGracePeriodSeconds`` from it.

    python benchmarks/bench_checkpoint.py                      # vggsound, configs/vggsound.yaml
    python benchmarks/bench_checkpoint.py --preset as2m --out /mnt/shared/tmp
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from benchmarks.bench_step import make_batch  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.engine.checkpoint import Checkpointer  # noqa: E402
from pipeline.engine.distributed import build_engine, init_distributed  # noqa: E402
from pipeline.pretrain.trainer import Pretraining  # noqa: E402


class LoaderState:
    """The loader's part of the client state: its real size is a few counters per rank."""

    def state_dict(self) -> dict:
        return {"epoch": 0, "batches": 0, "samples": 0}


def adam_ready(optimizer) -> bool:
    """Whether the (ZeRO-wrapped) AdamW holds moment estimates, i.e. has stepped once."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return any("exp_avg" in s for s in inner.state.values())


def build(cfg, info):
    """(engine, optimizer) after optimizer steps on batch 1 until AdamW has its states (an
    fp16 step skipped on a loss-scale overflow leaves them empty)."""
    task = Pretraining(cfg, info)
    model = task.model()
    engine, optimizer = build_engine(
        model, task.optimizer(model, 1e-4), cfg.engine_spec(), info.world_size
    )
    batch = make_batch(model, 1, info.device, task.dtype)
    for i in range(8):
        gen = torch.Generator().manual_seed(i)
        out = engine(batch["image"], batch["audio"], generator=gen)
        engine.backward(out.loss)
        engine.step()
        if adam_ready(optimizer):
            return engine, optimizer
    raise RuntimeError("AdamW has no states after 8 steps (every fp16 step overflowed?)")


def folder_bytes(root: Path) -> dict[str, int]:
    return {str(f.relative_to(root)): f.stat().st_size for f in root.rglob("*") if f.is_file()}


def measure(cfg, info, out: Path, repeats: int, config_precision: str) -> dict:
    engine, _ = build(cfg, info)
    params = sum(p.numel() for p in engine.module.parameters())
    root = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=out))
    saver = Checkpointer(engine, root, keep_last=1, rank=info.rank, world_size=info.world_size)
    save_s, sync_s, files = [], [], {}
    try:
        for step in range(1, repeats + 1):
            os.sync()  # the previous save's files are on the disk: each save starts equal
            t0 = time.perf_counter()
            saver.save(step, {"step": step, "epoch": 0, "epoch_start": 0}, LoaderState(), None)
            save_s.append(time.perf_counter() - t0)
            os.sync()
            sync_s.append(time.perf_counter() - t0)
            files = folder_bytes(root / f"step{step:08d}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    gb = sum(files.values()) / 1e9
    median = statistics.median(save_s)
    return {
        "bench": "checkpoint",
        "preset": cfg.model.preset,
        "precision": cfg.train.precision,
        "config_precision": config_precision,
        "zero_stage": cfg.train.zero_stage,
        "world_size": info.world_size,
        "params_m": round(params / 1e6, 1),
        "gb": round(gb, 3),
        "bytes_per_param": round(gb * 1e9 / params, 2),
        "files_gb": {k: round(v / 1e9, 3) for k, v in sorted(files.items()) if v > 1e6},
        "save_s": [round(s, 2) for s in save_s],
        "save_sync_s": [round(s, 2) for s in sync_s],
        "save_s_median": round(median, 2),
        "save_sync_s_median": round(statistics.median(sync_s), 2),
        "gb_per_s": round(gb / median, 3),
        "gb_per_s_synced": round(gb / statistics.median(sync_s), 3),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="vggsound", help="configs/<preset>.yaml's model")
    parser.add_argument(
        "--precision", help="train.precision (default: the preset config's; fp16 → bf16 on CPU)"
    )
    parser.add_argument("--zero-stage", type=int, help="train.zero_stage (default: the config's)")
    parser.add_argument("--repeats", type=int, default=3, help="saves timed (median reported)")
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()), help="folder saved into"
    )
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    preset = load_config(REPO / "configs" / f"{args.preset}.yaml")
    precision = args.precision or preset.train.precision
    if precision == "fp16" and not torch.cuda.is_available():
        # NOTE: DeepSpeed has no fp16 on the CPU. bf16 (autocast over fp32 weights) writes the
        # model in fp32: 2 bytes per parameter more than fp16 weights, so an upper bound.
        precision = "bf16"
    stage = preset.train.zero_stage if args.zero_stage is None else args.zero_stage
    info = init_distributed()
    cfg = load_config(
        REPO / "configs" / "debug.yaml",
        [
            f"model.preset={args.preset}",
            f"train.precision={precision}",
            f"train.zero_stage={stage}",
            "data.batch_size=1",
        ],
    )
    print(json.dumps(measure(cfg, info, args.out, args.repeats, preset.train.precision)))


if __name__ == "__main__":
    main()
