"""``avfusion shards build``: inputs → shard set; parallel, shuffled, deterministic, resumable.

Order of work: list and sort the inputs (or, with ``dataset``, a public dataset's index
entries and their media: ``preprocess.datasets.sources``) → put them in the seeded order
(``preprocess.shuffle``; ``shuffle=False`` keeps the sorted order) → take this part's block → check the destination →
load resume state → decode in worker processes (results consumed in order) → per window of
inputs, write its clips in the seeded permutation into shards of ``samples_per_shard``; after
each tar, a completion record ``.progress/shard-NNNNNN.tar.json`` {shard entry, cursor, errors}
→ ``errors.jsonl`` → ``manifest.json`` (last). The cursor (window, samples of it already
written) says where the next shard starts, so ``--resume`` keeps every recorded shard untouched,
redoes exactly the rest, and the result is byte-identical to an uninterrupted build.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from avbase import shardformat as fmt
from avbase.errors import AvfusionError
from avbase.progress import progress as show_progress
from avbase.urls import redact
from preprocess.datasets.sources import DatasetSpec, dataset_sources
from preprocess.datasets.summary import dataset_summary
from preprocess.dense_members import declared_members
from preprocess.inputs import Source, collect_sources, select_part, source_id
from preprocess.labels import class_list, label_counts, label_index
from preprocess.options import SampleOptions, Task
from preprocess.pool import Failure, available_cores, ordered_map
from preprocess.shards import (
    ShardWriter,
    make_manifest,
    read_manifest,
    write_errors,
    write_manifest,
)
from preprocess.shuffle import WindowBuffer, shuffled, windows
from preprocess.storage import TMP_MARK, Store

CONFIG_RECORD = f"{fmt.PROGRESS_DIR}/config.json"
WORKER = "preprocess.worker:run_task"  # imported only by the worker processes
SHARD_FILE = re.compile(r"shard-\d{6}\.tar")


@dataclass(frozen=True)
class BuildConfig:
    inputs: tuple[str, ...]
    out: str
    options: SampleOptions = SampleOptions()
    samples_per_shard: int = 1000
    workers: int = 1
    timeout: float = 300.0  # per input, wall clock
    decode_threads: int = 0  # per worker; 0: available cores / workers
    resume: bool = False
    part_index: int = 0
    num_parts: int = 1
    shuffle: bool = True  # seeded input order + clip permutation per window
    seed: int = 0
    window: int = 256  # inputs whose clips are permuted together
    force: bool = False  # replace a shard set (or unfinished build) at ``out``
    classes: tuple[str, ...] | None = None  # fixed class list (--classes); None: sorted labels seen
    dataset: DatasetSpec | None = None  # a public dataset's index + media (then no inputs)


@dataclass
class Progress:
    shards: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    cursor: tuple[int, int] = (0, 0)  # (window, samples of it already written)


def build(cfg: BuildConfig) -> dict | None:
    """Build (or finish) the shard set; returns its manifest, ``None`` if it was complete."""
    sources, labels, multi, dataset = _sources(cfg)
    if cfg.shuffle:
        sources = shuffled(sources, cfg.seed, name=lambda s: s.name)
    tasks = [
        Task(
            s.path,
            s.clip.source_id if s.clip else source_id(s.path),
            s.label,
            label_index(s.label, labels, multi, s.path) if s.label is not None else None,
            s.masks,
            s.clip,
        )
        for s in select_part(sources, cfg.part_index, cfg.num_parts)
    ]
    record = _config_record(cfg, tasks)
    store = Store(cfg.out)
    store.check_writable()
    progress = _prepare(store, record, cfg)
    if progress is None:
        return None
    _run(store, cfg, tasks, progress)
    manifest = make_manifest(
        cfg.options.preset_record(), progress.shards, len(progress.errors), labels, record
    )
    has_masks = any(t.masks or t.clip and t.clip.regions for t in tasks)
    manifest["members"] = declared_members(has_masks, cfg.options.keep_waveform)
    if dataset is not None:
        manifest["dataset"] = dataset_summary(dataset, tasks, progress.errors)
    if labels:
        failed = {e.get("clip_id", e["source"]) for e in progress.errors}
        done = [t.label_index for t in tasks if t.name not in failed and t.label_index is not None]
        manifest.update(
            multi_label=multi,
            labelled_inputs=len(done),
            label_counts=label_counts(done, len(labels)),
        )
    write_errors(store, progress.errors)
    write_manifest(store, manifest)
    store.remove(fmt.PROGRESS_DIR)
    return manifest


def _sources(cfg: BuildConfig) -> tuple[list[Source], list[str], bool, dict | None]:
    """(sources, class list, multi-label, the dataset's manifest record or None)."""
    if cfg.dataset is None:
        sources = collect_sources(list(cfg.inputs))
        return sources, *_classes(sources, cfg.classes), None
    found = dataset_sources(cfg.dataset, cfg.classes)
    multi = found.multi_label or _classes(found.sources, found.classes)[1]
    return found.sources, found.classes, multi, found.record


def _classes(sources: list[Source], given) -> tuple[list[str], bool]:
    return class_list([s.label for s in sources], given)


def _run(store: Store, cfg: BuildConfig, tasks: list[Task], progress: Progress) -> None:
    """Decode from the cursor's window on and fill shards, committing each when full."""
    spans = windows(len(tasks), cfg.window if cfg.shuffle else 1)
    seed = cfg.seed if cfg.shuffle else None
    first, skip = progress.cursor
    start = spans[first].start if first < len(spans) else len(tasks)
    threads = cfg.decode_threads or max(1, available_cores() // cfg.workers)
    writer: ShardWriter | None = None
    pending: list[dict] = []  # errors since the last completion record
    clips, failed, t0 = 0, len(progress.errors), time.monotonic()
    bar = show_progress(total=len(tasks), initial=start, unit="videos", desc="shards build")
    results = ordered_map(
        WORKER, (cfg.options, threads), tasks[start:], workers=cfg.workers, timeout=cfg.timeout
    )
    try:
        with closing(results):
            for w in range(first, len(spans)):
                offset = skip if w == first else 0
                with WindowBuffer() as window:
                    # 1. decode the window's inputs (errors were recorded if it was begun)
                    failed += _decode_window(
                        window, spans[w], results, tasks, None if offset else pending, bar
                    )
                    # 2. write its clips in the seeded order, committing full shards
                    for j, sample in enumerate(window.samples(seed, offset), start=offset + 1):
                        writer = writer or ShardWriter(store, len(progress.shards))
                        writer.add(sample)
                        clips += 1
                        if writer.num_samples == cfg.samples_per_shard:
                            cursor = (w, j) if j < len(window) else (w + 1, 0)
                            _commit(store, writer, cursor, pending, progress)
                            writer = None
                bar.set_postfix(
                    clips=clips,
                    clips_per_s=f"{clips / (time.monotonic() - t0):.1f}",
                    failed=failed,
                    refresh=False,
                )
        if writer is not None:
            _commit(store, writer, (len(spans), 0), pending, progress)
        progress.errors.extend(pending)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()


def _decode_window(
    window: WindowBuffer,
    span: range,
    results,
    tasks: list[Task],
    errors: list[dict] | None,
    bar: tqdm,
) -> int:
    """Add the decoded samples of the inputs at ``span`` to ``window`` and their failures to
    ``errors`` (``None``: already recorded); returns the number of failed inputs."""
    failed = 0
    for pos, (_, result) in zip(span, results, strict=False):
        if isinstance(result, Failure):
            failed += 1
            if errors is not None:
                errors.append(_error(tasks[pos], result))
        else:
            for sample in result:
                window.add(sample)
        bar.update(1)
    return failed


def _error(task: Task, failure: Failure) -> dict:
    """The ``errors.jsonl`` line of a failed input; a dataset clip's also names its id."""
    record = {"source": redact(task.path), "stage": failure.stage, "error": redact(failure.error)}
    if task.clip is not None and failure.stage != "index":
        record["clip_id"] = task.clip.id
    return record


def _commit(
    store: Store,
    writer: ShardWriter,
    cursor: tuple[int, int],
    pending: list[dict],
    progress: Progress,
) -> None:
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
    rows = ((t.path, t.label, *(x for x in (t.masks, t.clip) if x)) for t in tasks)
    listing = "".join("\t".join(map(str, row)) + "\n" for row in rows).encode()
    return {
        "inputs": [redact(i) for i in cfg.inputs],
        **({"dataset": cfg.dataset.record()} if cfg.dataset else {}),
        "part_index": cfg.part_index,
        "num_parts": cfg.num_parts,
        "num_sources": len(tasks),
        "sources_sha256": hashlib.sha256(listing).hexdigest(),
        "samples_per_shard": cfg.samples_per_shard,
        "options": asdict(cfg.options),
        "shuffle": {"seed": cfg.seed, "window": cfg.window} if cfg.shuffle else None,
    }


def _prepare(store: Store, record: dict, cfg: BuildConfig) -> Progress | None:
    """Check that ``out`` may be written and load the resume state; ``None`` when complete.

    Only an empty destination, a resumable build of the same inputs and options (``resume``),
    or ``force`` (which first removes the shard set or unfinished build there) is accepted.
    """
    if cfg.force:
        _remove_set(store)
    if store.exists(fmt.MANIFEST):
        if not cfg.resume:
            raise AvfusionError(
                f"{store.url}: already holds a shard set; choose an empty --out "
                f"(or --force to replace it)"
            )
        if read_manifest(store)["created_by"]["config"] != record:
            raise AvfusionError(
                f"{store.url}: holds a shard set built from other inputs or options"
            )
        return None
    if not store.exists(CONFIG_RECORD):
        if not cfg.force:
            store.check_empty("choose an empty --out (or --force to replace shard files there)")
        store.write_bytes(CONFIG_RECORD, json.dumps(record).encode())
        return Progress()
    if not cfg.resume:
        raise AvfusionError(
            f"{store.url}: holds an unfinished build; pass --resume to finish it, "
            f"choose an empty --out, or --force to start again"
        )
    old = json.loads(store.read_bytes(CONFIG_RECORD))
    if old != record:
        keys = sorted(k for k in record if old.get(k) != record[k])
        raise AvfusionError(
            f"{store.url}: --resume with other inputs or options than the "
            f"unfinished build (differs in: {', '.join(keys)})"
        )
    return _load_records(store)


def _load_records(store: Store) -> Progress:
    """The recorded shards (kept as they are) up to the first missing or damaged one."""
    progress = Progress()
    while store.exists(name := fmt.progress_record(len(progress.shards))):
        rec = json.loads(store.read_bytes(name))
        shard = rec["shard"]
        if not store.exists(shard["name"]) or store.size(shard["name"]) != shard["bytes"]:
            break  # crashed shard: redo from here
        progress.shards.append(shard)
        progress.errors.extend(rec["errors"])
        progress.cursor = tuple(rec["cursor"])
    for name in store.list(fmt.PROGRESS_DIR):  # stale records after a redone shard
        if name.endswith(".tar.json") and name >= fmt.progress_record(len(progress.shards)):
            store.remove(name)
    store.remove_temporaries()
    return progress


def _remove_set(store: Store) -> None:
    """Delete a shard set or unfinished build (manifest first, so none is left half-valid)."""
    store.remove(fmt.MANIFEST)
    for name in store.list():
        if SHARD_FILE.fullmatch(name) or name == fmt.ERRORS or TMP_MARK in name:
            store.remove(name)
    store.remove(fmt.PROGRESS_DIR)
