"""``avfusion shards build``: inputs → shard set; parallel, deterministic, resumable.

Order of work: list and sort the inputs → check the destination → load resume state →
decode in worker processes (results consumed in input order) → fill shards of
``samples_per_shard`` samples; after each tar, a completion record
``.progress/shard-NNNNNN.tar.json`` {shard entry, cursor, errors} → ``errors.jsonl`` →
``manifest.json`` (last). The cursor (input position, clip offset) says where the next shard
starts, so ``--resume`` redoes exactly the shards without a record and the result is
byte-identical to an uninterrupted build.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from preprocess import shardformat as fmt
from preprocess.errors import AvfusionError
from preprocess.inputs import collect_sources, label_names, select_part, source_id
from preprocess.options import SampleOptions, Task
from preprocess.pool import Failure, available_cores, ordered_map
from preprocess.shards import (
    ShardWriter,
    make_manifest,
    read_manifest,
    write_errors,
    write_manifest,
)
from preprocess.storage import Store

CONFIG_RECORD = f"{fmt.PROGRESS_DIR}/config.json"
WORKER = "preprocess.samples:run_task"      # imported only by the worker processes


@dataclass(frozen=True)
class BuildConfig:
    inputs: tuple[str, ...]
    out: str
    options: SampleOptions = SampleOptions()
    samples_per_shard: int = 1000
    workers: int = 1
    timeout: float = 300.0          # per input, wall clock
    decode_threads: int = 0         # per worker; 0: available cores / workers
    resume: bool = False
    part_index: int = 0
    num_parts: int = 1


@dataclass
class Progress:
    shards: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    cursor: tuple[int, int] = (0, 0)      # (input position, samples of it already written)


def build(cfg: BuildConfig) -> dict | None:
    """Build (or finish) the shard set; returns its manifest, ``None`` if it was complete."""
    sources = collect_sources(list(cfg.inputs))
    labels = label_names(sources)
    tasks = [Task(s.path, source_id(s.path), s.label,
                  labels.index(s.label) if s.label is not None else None)
             for s in select_part(sources, cfg.part_index, cfg.num_parts)]
    record = _config_record(cfg, tasks)
    store = Store(cfg.out)
    store.check_writable()
    progress = _load_progress(store, record, cfg.resume)
    if progress is None:
        print(f"{cfg.out}: already complete", file=sys.stderr)
        return None
    _run(store, cfg, tasks, progress)
    manifest = make_manifest(cfg.options.preset_record(), progress.shards, len(progress.errors),
                             labels, record)
    write_errors(store, progress.errors)
    write_manifest(store, manifest)
    store.remove(fmt.PROGRESS_DIR)
    return manifest


def _run(store: Store, cfg: BuildConfig, tasks: list[Task], progress: Progress) -> None:
    first, skip = progress.cursor
    threads = cfg.decode_threads or max(1, available_cores() // cfg.workers)
    writer: ShardWriter | None = None
    pending: list[dict] = []           # errors since the last completion record
    clips, failed, t0 = 0, len(progress.errors), time.monotonic()
    bar = tqdm(total=len(tasks), initial=first, unit="video", desc="shards build", disable=None)
    try:
        for pos, result in ordered_map(WORKER, (cfg.options, threads), tasks[first:],
                                       workers=cfg.workers, timeout=cfg.timeout):
            i = first + pos
            if isinstance(result, Failure):
                pending.append({"source": tasks[i].path, "stage": result.stage, "error": result.error})
                failed += 1
                result = []
            offset = skip if pos == 0 else 0
            for j, sample in enumerate(result[offset:], start=offset + 1):
                writer = writer or ShardWriter(store, len(progress.shards))
                writer.add(sample)
                clips += 1
                if writer.num_samples == cfg.samples_per_shard:
                    cursor = (i, j) if j < len(result) else (i + 1, 0)
                    _commit(store, writer, cursor, pending, progress)
                    writer = None
            bar.update(1)
            bar.set_postfix(clips=clips, clips_per_s=f"{clips / (time.monotonic() - t0):.1f}",
                            failed=failed, refresh=False)
        if writer is not None:
            _commit(store, writer, (len(tasks), 0), pending, progress)
        progress.errors.extend(pending)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()


def _commit(store: Store, writer: ShardWriter, cursor: tuple[int, int], pending: list[dict],
            progress: Progress) -> None:
    """Close the shard, then write its completion record (the tar is durable before it)."""
    entry = writer.close()
    record = {"shard": entry, "cursor": list(cursor), "errors": list(pending)}
    store.write_bytes(fmt.progress_record(len(progress.shards)), json.dumps(record).encode())
    progress.shards.append(entry)
    progress.errors.extend(pending)
    progress.cursor = cursor
    pending.clear()


def _config_record(cfg: BuildConfig, tasks: list[Task]) -> dict:
    """What determines the output bytes (execution settings such as workers excluded)."""
    listing = "".join(f"{t.path}\t{t.label}\n" for t in tasks).encode()
    return {"inputs": list(cfg.inputs), "part_index": cfg.part_index, "num_parts": cfg.num_parts,
            "num_sources": len(tasks), "sources_sha256": hashlib.sha256(listing).hexdigest(),
            "samples_per_shard": cfg.samples_per_shard, "options": asdict(cfg.options)}


def _load_progress(store: Store, record: dict, resume: bool) -> Progress | None:
    """Resume state from the completion records; ``None`` when the set is already complete."""
    if store.exists(fmt.MANIFEST):
        if not resume:
            raise AvfusionError(f"{store.url}: already holds a shard set; choose an empty --out")
        if read_manifest(store)["created_by"]["config"] != record:
            raise AvfusionError(f"{store.url}: holds a shard set built from other inputs or options")
        return None
    if not store.exists(CONFIG_RECORD):
        store.write_bytes(CONFIG_RECORD, json.dumps(record).encode())
        return Progress()
    if not resume:
        raise AvfusionError(f"{store.url}: holds an unfinished build; pass --resume to finish "
                         f"it, or choose an empty --out")
    old = json.loads(store.read_bytes(CONFIG_RECORD))
    if old != record:
        keys = sorted(k for k in record if old.get(k) != record[k])
        raise AvfusionError(f"{store.url}: --resume with other inputs or options than the "
                         f"unfinished build (differs in: {', '.join(keys)})")
    progress = Progress()
    while store.exists(name := fmt.progress_record(len(progress.shards))):
        rec = json.loads(store.read_bytes(name))
        shard = rec["shard"]
        if not store.exists(shard["name"]) or store.size(shard["name"]) != shard["bytes"]:
            break                                          # crashed shard: redo from here
        progress.shards.append(shard)
        progress.errors.extend(rec["errors"])
        progress.cursor = tuple(rec["cursor"])
    for name in store.list(fmt.PROGRESS_DIR):              # stale records after a redone shard
        if name.endswith(".tar.json") and name >= fmt.progress_record(len(progress.shards)):
            store.remove(name)
    store.remove_temporaries()
    return progress
