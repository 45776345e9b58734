"""Benchmark: shard building vs the PyAV decode floor and an ffmpeg-subprocess pipeline.

Corpus: ../shared/media/typical replicated (symlinks under new names) to >= 300 clip-seconds.
Three variants, one process each, measured in the same run:
  (a) floor   — PyAV decodes both streams of every file and discards the frames;
  (b) builder — ``preprocess.build`` (``--workers 1``), steady state: a one-file warm-up build
                first starts the worker forkserver in the same process (the one-off start-up —
                interpreter, torch imports, warm-up — is reported as ``builder_startup_cpu_s``);
  (c) ffmpeg  — video2dataset style: per video the ffmpeg CLI writes a 16-kHz mono wav and
                1-fps JPEG frames (short side 256) to a temp dir; then the same features
                (log-mel per clip, JPEG q90) and the same tar writer.
All decode with one thread per process; cost = CPU seconds of the variant's process and its
children (subprocesses included), so clips/s/core = clips / CPU seconds. Prints ONE JSON line.

    python benchmarks/bench_shards.py [--min-clip-seconds 300] [--repeat 2]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("AVFUSION_SHARED", REPO / ".." / "shared")) / "media"


def _cpu() -> tuple[float, float, int]:
    """(CPU seconds of this process + reaped children, wall clock, peak RSS KB of a child)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime, time.monotonic(), c.ru_maxrss


def make_corpus(root: Path, min_seconds: float) -> tuple[list[Path], int]:
    """Symlinks to typical/ files, replicated until their overlaps sum to ``min_seconds``."""
    with open(MEDIA / "MANIFEST.tsv", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["path"].startswith("typical/")]
    files, seconds, clips, copy = [], 0.0, 0, 0
    while seconds < min_seconds:
        for r in rows:
            src = MEDIA / r["path"]
            link = root / f"copy{copy}" / src.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src.resolve())
            files.append(link)
            seconds += float(r["overlap_seconds"])
            clips += int(r["expected_samples"])
        copy += 1
    return files, clips


def floor(files: list[Path], threads: int) -> None:
    import av

    for path in files:
        with av.open(str(path)) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            v.thread_type, v.codec_context.thread_count = "AUTO", threads
            for _ in c.decode(v, a):
                pass


def _proc_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its reaped children (/proc/PID/stat utime..cstime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(map(int, fields[11:15])) / os.sysconf("SC_CLK_TCK")


def _watch_peak_rss(parent: int, peak: list[int], stop: threading.Event) -> None:
    """Largest VmHWM (peak RSS, KB) among the children of ``parent`` (the workers)."""
    while not stop.wait(0.2):
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            return
        for pid in children:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            hwm = next(
                (line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")), 0
            )
            peak[0] = max(peak[0], int(hwm))


def builder(files: list[Path], out: Path) -> dict:
    """Workers are children of the forkserver: their CPU is read from its /proc entry."""
    from multiprocessing import forkserver

    from preprocess.build import BuildConfig, build

    build(BuildConfig((str(MEDIA / "typical" / "ok_faststart.mp4"),), str(out / "warmup")))
    server = forkserver._forkserver._forkserver_pid
    startup = _cpu()[0] + _proc_cpu(server)
    peak, stop = [0], threading.Event()
    watcher = threading.Thread(target=_watch_peak_rss, args=(server, peak, stop), daemon=True)
    watcher.start()
    t0, parent0, workers0 = time.monotonic(), _cpu()[0], _proc_cpu(server)
    manifest = build(
        BuildConfig(tuple(map(str, files)), str(out / "set"), workers=1, decode_threads=1)
    )
    parent, workers = _cpu()[0] - parent0, _proc_cpu(server) - workers0
    wall = time.monotonic() - t0
    stop.set()
    watcher.join()
    return {
        "cpu_s": parent + workers,
        "parent_cpu_s": parent,
        "wall_s": wall,
        "startup_cpu_s": startup,
        "peak_rss_kb": peak[0],
        "clips": manifest["num_samples"],
        "bytes_per_sample": sum(s["bytes"] for s in manifest["shards"]) / manifest["num_samples"],
    }


def ffmpeg_pipeline(files: list[Path], out: Path) -> int:
    import imageio_ffmpeg
    import numpy as np
    from PIL import Image

    from avbase.features import get_frontend
    from avbase.members import npy_bytes
    from preprocess.features import log_mel
    from preprocess.shards import ShardWriter
    from preprocess.storage import Store

    ffmpeg, fe, clips = imageio_ffmpeg.get_ffmpeg_exe(), get_frontend("deepavfusion"), 0
    writer = ShardWriter(Store(str(out)), 0)
    scale = "scale='if(gt(iw,ih),-2,256)':'if(gt(iw,ih),256,-2)'"
    for n, path in enumerate(files):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    ffmpeg,
                    "-nostdin",
                    "-v",
                    "error",
                    "-threads",
                    "1",
                    "-i",
                    str(path),
                    "-map",
                    "0:a:0",
                    "-ac",
                    "1",
                    "-ar",
                    "16000",
                    f"{tmp}/a.wav",
                    "-map",
                    "0:v:0",
                    "-vf",
                    f"fps=1,{scale}",
                    "-q:v",
                    "2",
                    f"{tmp}/f%05d.jpg",
                ],
                check=True,
            )
            with wave.open(f"{tmp}/a.wav") as w:
                pcm = (
                    np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
                )
            frames = sorted(Path(tmp).glob("f*.jpg"))
            for k in range(0, len(pcm), 160000):
                clip, jpgs = pcm[k : k + 160000], frames[k // 16000 : k // 16000 + 10]
                if len(clip) < 32000 or not jpgs:
                    continue
                members = [("mel.npy", npy_bytes(log_mel(clip, fe)))]
                for i, jpg in enumerate(jpgs):
                    buf = io.BytesIO()
                    Image.open(jpg).convert("RGB").save(buf, "JPEG", quality=90, optimize=True)
                    members.append((f"f{i:02d}.jpg", buf.getvalue()))
                writer.add((f"v{n}_{k // 160000}", members))
                clips += 1
    writer.close()
    return clips


def run_variant(name: str, corpus: Path, out: Path) -> dict:
    files = sorted(p for p in corpus.rglob("*") if p.is_symlink())
    start = _cpu()
    result = {}
    if name == "floor":
        floor(files, threads=1)  # as the builder's decoder
    elif name == "builder":
        result = builder(files, out)
    else:
        result = {"clips": ffmpeg_pipeline(files, out)}
    end = _cpu()
    result.setdefault("cpu_s", end[0] - start[0])
    result.setdefault("wall_s", end[1] - start[1])
    # builder: its worker process; others: this process or an ffmpeg child
    rss = result.pop("peak_rss_kb", max(end[2], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    result["peak_rss_mb"] = round(rss / 1024)
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--min-clip-seconds", type=float, default=300.0)
    p.add_argument(
        "--repeat", type=int, default=2, help="rounds of the three variants (min counts)"
    )
    p.add_argument("--variant", choices=["floor", "builder", "ffmpeg"], help=argparse.SUPPRESS)
    p.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:  # child process: one variant
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(run_variant(args.variant, args.corpus, Path(out))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        files, clips = make_corpus(Path(tmp), args.min_clip_seconds)
        results: dict[str, dict] = {}
        for _ in range(args.repeat):  # interleaved rounds; the cheapest run counts
            for name in ("floor", "builder", "ffmpeg"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--variant", name, "--corpus", tmp],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=REPO,
                )
                run = json.loads(proc.stdout.strip().splitlines()[-1])
                if name not in results or run["cpu_s"] < results[name]["cpu_s"]:
                    results[name] = run
    print(json.dumps(summarise(results, len(files), clips)))


def summarise(r: dict, videos: int, expected_clips: int) -> dict:
    clips = r["builder"]["clips"]
    per_core = {k: round(clips / v["cpu_s"], 2) for k, v in r.items()}
    b_a = r["builder"]["cpu_s"] / r["floor"]["cpu_s"]
    c_b = r["ffmpeg"]["cpu_s"] / r["builder"]["cpu_s"]
    return {
        "bench": "shards",
        "videos": videos,
        "clips": clips,
        "expected_clips": expected_clips,
        "cores": os.cpu_count(),
        "clips_per_s_per_core": per_core,
        "cpu_s": {k: round(v["cpu_s"], 2) for k, v in r.items()},
        "wall_s": {k: round(v["wall_s"], 2) for k, v in r.items()},
        "builder_parent_cpu_s": round(r["builder"]["parent_cpu_s"], 2),
        "builder_startup_cpu_s": round(r["builder"]["startup_cpu_s"], 2),
        "ratio_builder_vs_floor": round(b_a, 3),
        "ratio_ffmpeg_vs_builder": round(c_b, 3),
        "bytes_per_sample": round(r["builder"]["bytes_per_sample"]),
        "peak_rss_mb": {k: v["peak_rss_mb"] for k, v in r.items()},
        "targets_met": {
            "builder_within_1.5x_floor": b_a <= 1.5,
            "builder_3x_ffmpeg": c_b >= 3.0,
            "sample_le_200KB": r["builder"]["bytes_per_sample"] <= 200_000,
        },
    }


if __name__ == "__main__":
    main()
