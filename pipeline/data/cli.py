"""``avfusion data bench``: run the streaming loader of one rank and report what it delivered."""

from __future__ import annotations

import argparse
import hashlib
import json
import time

from avbase.errors import check_ranges
from avbase.features import ImageSpec, get_frontend
from avbase.progress import progress
from pipeline.config import DataConfig
from pipeline.data.loader import build_loader
from pipeline.data.shardio import read_manifest


def register(subparsers) -> None:
    data = subparsers.add_parser(
        "data", help="streaming loader tools", description="Tools for the streaming shard loader."
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser(
        "bench",
        help="time one rank's loader and summarise the samples it saw",
        description="Iterate the training loader of rank R of W over the shard set DEST (full "
        "augmentation, real worker processes) and print one JSON line: samples/s, "
        "batches, the number and sha256 of the sorted distinct keys seen, error "
        "counts, padding/dropping and the workers' peak RSS. Ranks of one world see "
        "disjoint keys; with --remainder pad their union is the whole set. s3:// sets "
        "use the standard AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dest", metavar="DEST", help="shard-set directory or s3://bucket/prefix")
    p.add_argument("--world-size", type=int, default=1, help="number of ranks W")
    p.add_argument("--rank", type=int, default=0, help="this rank R (0 <= R < W)")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes (0: in-process)")
    p.add_argument(
        "--batches",
        type=int,
        default=None,
        help="stop after K batches (%(default)s: the whole epoch)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch B")
    p.add_argument("--epoch", type=int, default=0, help="epoch (shard shuffle seed = seed + epoch)")
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument(
        "--remainder",
        choices=("pad", "drop"),
        default="pad",
        help="equalise ranks by repeating samples (pad) or dropping them (drop)",
    )
    p.add_argument("--shuffle-buffer", type=int, default=256, help="sample shuffle buffer slots")
    p.add_argument(
        "--interleave",
        type=int,
        default=DataConfig.interleave,
        help="shards each stream reads at once",
    )
    p.add_argument("--image-size", type=int, default=ImageSpec().size, help="image side S")
    p.add_argument("--eval", action="store_true", help="evaluation transforms (no randomness)")
    p.add_argument(
        "--keys-out", metavar="FILE", help="also write the sorted distinct keys, one a line"
    )
    p.set_defaults(func=bench)


def bench(args: argparse.Namespace) -> int:
    check_ranges(
        ("--world-size", args.world_size, args.world_size >= 1, "an integer >= 1"),
        (
            "--rank",
            args.rank,
            0 <= args.rank < args.world_size,
            f"an integer in [0, --world-size {args.world_size})",
        ),
        ("--batch-size", args.batch_size, args.batch_size >= 1, "an integer >= 1"),
        ("--batches", args.batches, args.batches is None or args.batches >= 1, "an integer >= 1"),
        ("--workers", args.workers, args.workers >= 0, "an integer >= 0"),
    )
    cfg = DataConfig(
        shards=args.dest,
        batch_size=args.batch_size,
        workers=args.workers,
        shuffle_buffer=args.shuffle_buffer,
        interleave=args.interleave,
        remainder=args.remainder,
    )
    try:
        preset = (
            read_manifest(args.dest).get("preset", {}).get("audio", {}).get("name", "deepavfusion")
        )
        loader = build_loader(
            cfg,
            audio=get_frontend(preset),
            image=ImageSpec(size=args.image_size),
            rank=args.rank,
            world_size=args.world_size,
            seed=args.seed,
            train=not args.eval,
        )
        keys, batches, elapsed = _run(loader, args.epoch, args.batches)
    finally:
        if "loader" in locals():
            loader.close()
    distinct = sorted(set(keys))
    if args.keys_out:
        with open(args.keys_out, "w") as f:
            f.write("".join(k + "\n" for k in distinct))
    print(
        json.dumps(
            {
                "dest": args.dest,
                "world_size": args.world_size,
                "rank": args.rank,
                "workers": args.workers,
                "batch_size": args.batch_size,
                "epoch": args.epoch,
                "batches": batches,
                "batches_per_epoch": len(loader),
                "samples": len(keys),
                "samples_per_s": round(len(keys) / elapsed, 1),
                "seconds": round(elapsed, 3),
                "keys": len(distinct),
                "keys_sha256": hashlib.sha256("\n".join(distinct).encode()).hexdigest(),
                "errors": loader.error_counts(),
                **{k: v for k, v in loader.stats().items() if k != "samples"},
            }
        )
    )
    return 0


def _run(loader, epoch: int, limit: int | None) -> tuple[list[str], int, float]:
    """Keys of the batches of ``epoch`` (at most ``limit`` batches), count and seconds taken."""
    loader.set_epoch(epoch)
    total = len(loader) if limit is None else min(limit, len(loader))
    keys, batches = [], 0
    start = time.perf_counter()
    with progress(total=total, unit="batches", desc="data bench") as bar:
        for batch in loader:
            keys += batch["key"]
            batches += 1
            bar.update()
            if batches == total:
                break
    return keys, batches, time.perf_counter() - start
