"""Streaming-loader throughput: shards (local, local S3 server) vs on-the-fly video decoding.

1. ``avfusion shards build`` on real videos (default: 10-s-scale clips ≤ 640×360 from
   ``<repo>/../shared/media/typical``), tiled to ``--samples`` samples.
2. Loader: the training pipeline (full augmentation, 224², deepavfusion preset) with ONE worker
   process over the local directory and over ``rclone serve s3`` on 127.0.0.1. Throughput per
   worker core = samples / CPU seconds of the worker process; the main process's per-sample CPU
   (uint8 → float normalisation, bookkeeping) is reported separately.
3. Baseline: per sample, what a loader without shards does (the official recipe, REFERENCE.md
   §6.1): PyAV open + seek to a random time, decode one frame and the 3-s audio window,
   resample to 16 kHz mono, MelSpectrogram + log10, then the same image augmentation;
   samples per CPU second of one single-threaded process.
Prints ONE JSON line with the ratios; run as ``python benchmarks/bench_loader.py``.
``--diversity``: instead, distinct source videos per batch vs a uniformly random batch
(:mod:`benchmarks.diversity`), one JSON line. ``--mixture``: instead, the realised proportions of
a 3-set mixture over an epoch against the configured weights (:mod:`benchmarks.mixture`), one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchaudio  # noqa: E402

from avbase.features import FRONTENDS, ImageSpec  # noqa: E402
from avbase.shardformat import MANIFEST  # noqa: E402
from benchmarks import diversity, mixture  # noqa: E402
from benchmarks.tiling import tile  # noqa: E402
from pipeline.config import DataConfig  # noqa: E402
from pipeline.data.augment import CROP_RATIO, Augment, crop_params  # noqa: E402
from pipeline.data.jpeg import resize_uint8  # noqa: E402
from pipeline.data.loader import build_loader  # noqa: E402
from tests.support.media import FOUR_VIDEOS, SHARED  # noqa: E402
from tests.support.s3server import S3Server  # noqa: E402

VIDEOS = (
    *FOUR_VIDEOS,
    "bbb_vp9_opus_640x360.webm",
    "moviepy_chaplin.mp4",
    "torchcodec_nasa_13013.mp4",
)
FE, IMAGE = FRONTENDS["deepavfusion"], ImageSpec()


def build_shards(videos: list[Path], out: Path) -> dict:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "shards",
            "build",
            *map(str, videos),
            "--out",
            str(out),
            "--workers",
            "2",
            "--samples-per-shard",
            "4",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return json.loads((out / MANIFEST).read_text())


def measure_loader(root: str, batch_size: int) -> dict:
    loader = build_loader(
        DataConfig(shards=root, batch_size=batch_size, workers=1),
        audio=FE,
        image=IMAGE,
        rank=0,
        world_size=1,
        seed=0,
    )
    main_cpu, start, samples = time.process_time(), time.perf_counter(), 0
    for batch in loader:
        samples += len(batch["key"])
    wall, main_cpu = time.perf_counter() - start, time.process_time() - main_cpu
    stats = loader.stats()
    loader.close()
    assert sum(loader.error_counts().values()) == 0, loader.error_counts()
    return {
        "samples": samples,
        "per_worker_core": samples / stats["worker_cpu_s"],
        "wall_samples_per_s": samples / wall,
        "main_cpu_ms_per_sample": 1e3 * main_cpu / samples,
        "peak_worker_rss_mb": stats["peak_worker_rss_mb"],
        "peak_worker_rss_growth_mb": stats["peak_worker_rss_growth_mb"],
    }


def decode_on_the_fly(
    path: str, clip_start: float, dur: float, rng: random.Random, mel: torch.nn.Module, aug: Augment
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training sample straight from the video (REFERENCE.md §6.1-6.4)."""
    mid = clip_start + rng.uniform(1.5, max(1.5, dur - 1.5))
    t = rng.uniform(mid - 1.5, mid + 1.5)
    with av.open(path) as c:
        vs, au = c.streams.video[0], c.streams.audio[0]
        c.seek(int(t / vs.time_base), stream=vs)  # keyframe at or before t
        frame = next(c.decode(vs)).to_ndarray(format="rgb24")
        c.seek(int(max(0.0, mid - 1.5) / au.time_base), stream=au)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        chunks, first = [], None
        for f in c.decode(au):
            first = f.time if first is None else first
            chunks += [r.to_ndarray()[0] for r in resampler.resample(f)]
            if f.time > mid + 1.5:
                break
    wave = torch.from_numpy(np.concatenate(chunks))
    wave = wave[max(0, round((mid - 1.5 - first) * 16000)) :][:48000]
    while wave.numel() < 48000:  # §6.2: append reversed copy
        wave = torch.cat([wave, wave.flip(0)])[:48000]
    wave = wave * 10 ** (rng.uniform(-6, 6) / 20)
    audio = torch.log10(mel(wave.clamp(-1, 1)) + FE.log_offset)[:, : FE.window_frames]
    img = torch.from_numpy(frame).permute(2, 0, 1)
    top, left, h, w = crop_params(img.shape[1], img.shape[2], IMAGE.crop_scale, CROP_RATIO, rng)
    img = resize_uint8(img[:, top : top + h, left : left + w], IMAGE.size)
    img = img.flip(-1) if rng.random() < 0.5 else img
    image = aug.normalise(img[None])[0]
    assert audio.shape == (FE.n_mels, FE.window_frames)
    return image, audio


def measure_on_the_fly(root: Path, manifest: dict, samples: int) -> float:
    metas = []
    for s in manifest["shards"]:
        with tarfile.open(root / s["name"]) as tf:
            metas += [
                json.load(tf.extractfile(m)) for m in tf.getmembers() if m.name.endswith(".json")
            ]
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=FE.sample_rate,
        n_fft=FE.n_fft,
        win_length=FE.win_length,
        hop_length=FE.hop_length,
        n_mels=FE.n_mels,
        f_min=FE.f_min,
        f_max=FE.f_max,
        mel_scale="htk",
        power=2.0,
    )
    aug, rng = Augment(FE, IMAGE, train=True), random.Random(0)
    start = time.process_time()
    for i in range(samples):
        m = metas[i % len(metas)]
        decode_on_the_fly(m["source"], m["clip_start"], m["clip_seconds"], rng, mel, aug)
    return samples / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--videos", nargs="*", type=Path, default=[SHARED / "media" / "typical" / v for v in VIDEOS]
    )
    parser.add_argument("--samples", type=int, default=1024, help="samples per loader run")
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--baseline-samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--diversity",
        action="store_true",
        help="measure batch diversity (epoch plan, simulated sorted corpus) instead",
    )
    parser.add_argument(
        "--mixture",
        action="store_true",
        help="measure the realised proportions of a 3-set weighted mixture over an epoch instead",
    )
    args = parser.parse_args()
    if args.diversity or args.mixture:
        print(json.dumps(diversity.measure() if args.diversity else mixture.measure()))
        return
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = build_shards(args.videos, tmp / "built")
        tile(
            tmp / "built",
            manifest,
            tmp / "s3" / "bench" / "set",
            args.samples,
            args.samples_per_shard,
        )
        local = measure_loader(str(tmp / "s3" / "bench" / "set"), args.batch_size)
        with S3Server(tmp / "s3", dir_cache_time="5m") as server:  # data written before the start
            os.environ.update(server.env)
            remote = measure_loader("s3://bench/set", args.batch_size)
        baseline = measure_on_the_fly(tmp / "built", manifest, args.baseline_samples)
    print(
        json.dumps(
            {
                "benchmark": "loader",
                "videos": len(args.videos),
                "distinct_samples": manifest["num_samples"],
                "samples": local["samples"],
                "batch_size": args.batch_size,
                "local_samples_per_s_per_worker_core": round(local["per_worker_core"], 1),
                "s3_samples_per_s_per_worker_core": round(remote["per_worker_core"], 1),
                "on_the_fly_samples_per_s_per_core": round(baseline, 1),
                "ratio_local_vs_on_the_fly": round(local["per_worker_core"] / baseline, 1),
                "ratio_s3_vs_on_the_fly": round(remote["per_worker_core"] / baseline, 1),
                "target_per_worker_core": 800,
                "local_wall_samples_per_s_1_worker": round(local["wall_samples_per_s"], 1),
                "s3_wall_samples_per_s_1_worker": round(remote["wall_samples_per_s"], 1),
                "main_cpu_ms_per_sample": round(local["main_cpu_ms_per_sample"], 3),
                "peak_worker_rss_mb_local": local["peak_worker_rss_mb"],
                "peak_worker_rss_mb_s3": remote["peak_worker_rss_mb"],
                "worker_rss_growth_mb_local": local["peak_worker_rss_growth_mb"],
                "worker_rss_growth_mb_s3": remote["peak_worker_rss_growth_mb"],
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
