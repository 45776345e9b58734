"""Benchmark: full ViT-B AVMAE training step (forward + backward), SDPA vs naive attention.

Four variants — attention ``sdpa`` | ``naive`` (softmax(q kᵀ) v, ``attn_impl="naive"``), each
with and without activation checkpointing — timed on the same inputs in the same run; prints ONE
JSON line with step times, peak memory and ratios. On CPU every variant runs in a fresh process
(peak RSS); on CUDA it runs in bf16 autocast and also reports samples/s, model-FLOPs utilisation
and peak memory at per-GPU batch 64 and 128.

    python benchmarks/bench_model.py                   # CPU: batch 2, 1 warm-up + 1 timed step
    python benchmarks/bench_model.py --batch 64        # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from model import build_avmae, get_model_config

VARIANTS = {
    "sdpa": ("sdpa", False),
    "naive": ("naive", False),
    "sdpa+ckpt": ("sdpa", True),
    "naive+ckpt": ("naive", True),
}
# Dense bf16 peak (TFLOP/s) by device-name fragment, most specific first.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))


def parse_args() -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="vggsound", help="model preset (default: vggsound, ViT-B)")
    p.add_argument(
        "--batch", type=int, default=64 if cuda else 2, help="batch of the variant comparison"
    )
    p.add_argument("--iters", type=int, default=10 if cuda else 1, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3 if cuda else 1, help="untimed steps per variant")
    p.add_argument(
        "--gpu-batches",
        type=int,
        nargs="*",
        default=[64, 128],
        help="per-GPU batches for the throughput / MFU figures (CUDA only)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="device bf16 dense peak for MFU (default: looked up from the device name)",
    )
    return p.parse_args()


def make_inputs(preset: str, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = get_model_config(preset)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)
    audio = 2 * torch.randn(batch, 1, *cfg.audio_size, generator=g) - 4
    return image.to(device), audio.to(device)


def train_step(model, image, audio, step: int) -> None:
    """Forward + backward with masks from a per-step seed (the same draws in every variant)."""
    model.zero_grad(set_to_none=True)
    generator = torch.Generator(device=image.device).manual_seed(step)
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=image.is_cuda):
        loss = model(image, audio, generator=generator).loss
    loss.backward()


def measure(
    preset: str, attn_impl: str, ckpt: bool, batch: int, iters: int, warmup: int, device: str
) -> dict:
    """Median step time and peak memory of one variant (peak RSS on CPU, allocator peak on CUDA)."""
    torch.manual_seed(0)
    model = (
        build_avmae(preset, attn_impl=attn_impl, activation_checkpointing=ckpt).to(device).train()
    )
    image, audio = make_inputs(preset, batch, device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + iters):
        start = time.perf_counter()
        train_step(model, image, audio, step)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {"step_s": round(statistics.median(times[warmup:]), 4)}
    if device == "cuda":
        result["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        result["rss_after_build_mb"] = round(rss_before)
    return result


def measure_isolated(*args) -> dict:
    """``measure`` in a fresh process, so each CPU variant has its own peak RSS."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, args)


def step_flops(preset: str, batch: int) -> tuple[float, float]:
    """(model FLOPs of one forward + backward, the share in attention matmuls), on meta tensors."""
    with torch.device("meta"):
        model = build_avmae(preset, attn_impl="naive")
    image, audio = make_inputs(preset, batch, "meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(image, audio).loss.backward()
    total = counter.get_total_flops()
    attention = counter.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0)
    return float(total), attention / total


def attention_kernel_speedup(device: str, batch: int, iters: int) -> float:
    """naive / SDPA time of the largest encoder self-attention alone (228 tokens, fwd + bwd)."""
    from model.vit import attention

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = (
        torch.randn(batch, 12, 228, 64, device=device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    )
    timings = {}
    for impl in ("sdpa", "naive"):
        times = []
        for _ in range(iters + 2):
            start = time.perf_counter()
            attention(q, k, v, 0.125, impl).sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        timings[impl] = statistics.median(times[2:])
    return round(timings["naive"] / timings["sdpa"], 3)


def peak_tflops(override: float | None) -> float | None:
    if override:
        return override
    name = torch.cuda.get_device_name()
    return next((tf for frag, tf in PEAK_BF16_TFLOPS if frag in name), None)


def gpu_throughput(args: argparse.Namespace) -> list[dict]:
    """samples/s, MFU (bf16, model FLOPs) and peak memory per batch, SDPA ± checkpointing."""
    peak = peak_tflops(args.peak_tflops)
    rows = []
    for batch in args.gpu_batches:
        flops, _ = step_flops(args.preset, batch)
        for ckpt in (False, True):
            row = {"batch": batch, "activation_checkpointing": ckpt}
            try:
                r = measure(args.preset, "sdpa", ckpt, batch, args.iters, args.warmup, "cuda")
            except torch.OutOfMemoryError:
                rows.append({**row, "oom": True})
                torch.cuda.empty_cache()
                continue
            row.update(
                samples_per_s=round(batch / r["step_s"], 1),
                step_s=r["step_s"],
                peak_mem_gb=r["peak_mem_gb"],
                tflops=round(flops / r["step_s"] / 1e12, 1),
                mfu=round(flops / r["step_s"] / (peak * 1e12), 3) if peak else None,
            )
            rows.append(row)
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = measure if device == "cuda" else measure_isolated
    variants = {
        name: run(args.preset, impl, ckpt, args.batch, args.iters, args.warmup, device)
        for name, (impl, ckpt) in VARIANTS.items()
    }
    mem = "peak_mem_gb" if device == "cuda" else "peak_rss_mb"
    flops, attention_share = step_flops(args.preset, args.batch)
    result = {
        "bench": "model",
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "iters": args.iters,
        "precision": "bf16-autocast" if device == "cuda" else "fp32",
        "variants": variants,
        "sdpa_speedup": round(variants["naive"]["step_s"] / variants["sdpa"]["step_s"], 3),
        "sdpa_speedup_ckpt": round(
            variants["naive+ckpt"]["step_s"] / variants["sdpa+ckpt"]["step_s"], 3
        ),
        "sdpa_mem_ratio": round(variants["naive"][mem] / variants["sdpa"][mem], 3),
        "ckpt_time_ratio": round(variants["sdpa+ckpt"]["step_s"] / variants["sdpa"]["step_s"], 3),
        "ckpt_mem_ratio": round(variants["sdpa+ckpt"][mem] / variants["sdpa"][mem], 3),
        "step_gflops": round(flops / 1e9, 1),
        "attention_flop_share": round(attention_share, 4),
        "attention_kernel_speedup": attention_kernel_speedup(device, args.batch, iters=10),
        "gpu": gpu_throughput(args) if device == "cuda" else None,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
