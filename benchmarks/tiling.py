"""Grow a small built shard set into a larger one for throughput benchmarks (no decoding needed)."""

from __future__ import annotations

from pathlib import Path

from avbase.shardformat import read_samples
from preprocess.shards import ShardWriter, write_manifest
from preprocess.storage import Store


def tile(src: Path, manifest: dict, dest: Path, samples: int, per_shard: int) -> None:
    """A shard set of ``samples`` samples (``per_shard`` a tar) repeating the built ones under
    new keys ``<key>-<repeat>``."""
    source, out = Store(str(src)), Store(str(dest))
    base = []
    for shard in manifest["shards"]:
        with source.open_read(shard["name"]) as f:
            base.extend(read_samples(f))
    dest.mkdir(parents=True)
    shards = []
    for lo in range(0, samples, per_shard):
        writer = ShardWriter(out, len(shards))
        for i in range(lo, min(lo + per_shard, samples)):
            key, members = base[i % len(base)]
            writer.add((f"{key}-{i // len(base)}", members))
        shards.append(writer.close())
    write_manifest(out, {**manifest, "shards": shards, "num_samples": samples})
