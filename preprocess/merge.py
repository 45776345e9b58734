"""``avfusion shards merge``: shard sets built separately (e.g. one per Indexed-Job part)
→ one shard set with a single manifest.

Shards are *copied* into DEST and renumbered in the order the parts are given (a part's
shards keep their sample counts, so the last shard of each part may be short). Samples pass
through the same deterministic tar writer, so an unchanged shard is copied byte for byte and
its sha256 must equal the part's manifest entry (a mismatch means a damaged part). Label
maps are reconciled: parts with one class list keep it (its order too: a dataset's or
``--classes`` order); otherwise the merged ``labels`` is the sorted union, and ``label_index``
is rewritten in the samples of parts whose map differs (their checksums then change, and the
new ones are recorded). ``errors.jsonl`` files are concatenated, the optional ``members`` and
the ``dataset`` counts combined.
"""

from __future__ import annotations

import json

from avbase import shardformat as fmt
from avbase.errors import AvfusionError
from avbase.members import META_EXT, OPTIONAL
from avbase.progress import progress
from preprocess.datasets.summary import merge_summaries
from preprocess.labels import remap_index
from preprocess.shards import (
    ShardWriter,
    make_manifest,
    read_errors,
    read_manifest,
    write_errors,
    write_manifest,
)
from preprocess.storage import Store


def merge(parts: list[str], out: str) -> dict:
    stores = [Store(p) for p in parts]
    manifests = [read_manifest(s) for s in stores]
    for part, m in zip(parts[1:], manifests[1:], strict=True):
        if m["preset"] != manifests[0]["preset"]:
            raise AvfusionError(
                f"{part}: preset differs from {parts[0]}'s; only sets built "
                f"with the same preset and clip/frame options can be merged"
            )
    labels = _labels(manifests)
    dest = Store(out)
    dest.check_writable()
    dest.check_empty("choose an empty --out")
    shards: list[dict] = []
    errors: list[dict] = []
    keys: set[str] = set()
    with progress(
        total=sum(len(m["shards"]) for m in manifests), unit="shards", desc="shards merge"
    ) as bar:
        for part, store, m in zip(parts, stores, manifests, strict=True):
            remap = [labels.index(name) for name in m.get("labels", [])]
            for entry in m["shards"]:
                shards.append(_copy_shard(store, entry, dest, len(shards), remap, keys, part))
                bar.update()
            errors += read_errors(store)
    write_errors(dest, errors)
    manifest = make_manifest(
        manifests[0]["preset"],
        shards,
        len(errors),
        labels,
        {"merged_from": list(parts), "parts": [m["created_by"]["config"] for m in manifests]},
    )
    if labels:
        counts = [0] * len(labels)
        for m in manifests:
            for name, n in zip(m.get("labels", []), m.get("label_counts") or [], strict=False):
                counts[labels.index(name)] += n
        manifest.update(
            multi_label=any(m.get("multi_label") for m in manifests),
            label_counts=counts,
            labelled_inputs=sum(m.get("labelled_inputs", 0) for m in manifests),
        )
    members = set().union(*(m.get("members", []) for m in manifests))
    manifest["members"] = [name for name in OPTIONAL if name in members]
    if all("dataset" in m for m in manifests):
        manifest["dataset"] = merge_summaries([m["dataset"] for m in manifests])
    write_manifest(dest, manifest)
    return manifest


def _labels(manifests: list[dict]) -> list[str]:
    """The parts' common class list (kept in its order: a dataset's or --classes order), or
    the sorted union when they differ."""
    lists = [m.get("labels", []) for m in manifests]
    if all(lst == lists[0] for lst in lists):
        return list(lists[0])
    return sorted(set().union(*lists))


def _copy_shard(
    src: Store, entry: dict, dest: Store, index: int, remap: list[int], keys: set[str], part: str
) -> dict:
    relabel = remap != list(range(len(remap)))
    writer = ShardWriter(dest, index)
    try:
        with src.open_read(entry["name"]) as f:
            for key, members in fmt.read_samples(f):
                if key in keys:
                    raise AvfusionError(
                        f"{part}/{entry['name']}: sample {key} is also in an "
                        f"earlier part (were the parts built from overlapping inputs?)"
                    )
                keys.add(key)
                writer.add(_relabel((key, members), remap) if relabel else (key, members))
    except BaseException:
        writer.abort()
        raise
    copied = writer.close()
    if copied["num_samples"] != entry["num_samples"] or (
        not relabel and copied["sha256"] != entry["sha256"]
    ):
        raise AvfusionError(
            f"{part}/{entry['name']}: content differs from the part's "
            f"manifest (run `avfusion shards verify {part}`)"
        )
    return copied


def _relabel(sample: fmt.Sample, remap: list[int]) -> fmt.Sample:
    key, members = sample
    out = []
    for ext, data in members:
        if ext == META_EXT:
            meta = json.loads(data)
            if meta.get("label_index") is not None:
                meta["label_index"] = remap_index(meta["label_index"], remap)
            data = json.dumps(meta).encode()
        out.append((ext, data))
    return key, out
