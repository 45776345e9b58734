"""Grow a small built shard set into a larger one for throughput benchmarks (no decoding needed)."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from preprocess.format import MANIFEST, shard_name


def tile(src: Path, manifest: dict, dest: Path, samples: int, per_shard: int) -> None:
    """A shard set of ``samples`` samples (``per_shard`` a tar) repeating the built ones under
    new keys ``<key>-<repeat>``."""
    base = []
    for s in manifest["shards"]:
        with tarfile.open(src / s["name"]) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                if not base or base[-1][0] != key:
                    base.append((key, []))
                base[-1][1].append((ext, tf.extractfile(m).read()))
    dest.mkdir(parents=True)
    shards = []
    for lo in range(0, samples, per_shard):
        path = dest / shard_name(len(shards))
        with tarfile.open(path, "w") as tf:
            for i in range(lo, min(lo + per_shard, samples)):
                key, parts = base[i % len(base)]
                for ext, data in parts:
                    info = tarfile.TarInfo(f"{key}-{i // len(base)}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        shards.append({"name": path.name, "num_samples": min(per_shard, samples - lo),
                       "bytes": path.stat().st_size,
                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    tiled = {**manifest, "shards": shards, "num_samples": samples}
    (dest / MANIFEST).write_text(json.dumps(tiled))
