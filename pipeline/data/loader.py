"""Streaming loader: a shard set (directory or ``s3://``) or a weighted mixture of sets
(:mod:`pipeline.data.mixture`) → augmented batches on every rank.

Pipeline (WebDataset shards, webdataset sample grouping): ``manifest.json`` (of every set of a
mixture: their shard indices run end to end, each shard is read from its own set's root) → epoch
plan (shard shuffle with seed + epoch *before* the rank/worker split, contiguous per-rank and
per-worker ranges, a sample shuffle buffer; :mod:`pipeline.data.epochplan`) → each worker process
reads its shards (s3fs opened inside the worker; retries; optional node-local cache;
:mod:`pipeline.data.shardio`) → decodes ``mel.npy`` and the one chosen JPEG, augments
(:mod:`pipeline.data.augment`) and batches (:mod:`pipeline.data.stream`) → torch DataLoader (batch j of
a rank comes from worker j % M, in order).

Equal steps: every rank yields exactly ``len(loader)`` batches of ``batch_size`` per epoch.
``data.remainder=pad`` repeats a rank's own samples to fill the last batch (keys stay disjoint
across ranks; ``remainder["padded"]`` per rank and epoch); ``drop`` leaves out the rank's last
samples (``remainder["dropped"]``). Samples skipped for errors are made up at the end of the
stream by re-emitting the stream's first samples (``stats()["refilled"]``).

Mixtures: each set gives its share of every epoch (:mod:`pipeline.data.mixture`; the same
stored features in every set), drawn and split as one shard list, so every guarantee here holds
for a mixture too; a sample of a set read more than once per epoch (``repeat``, an up-weighted
set) comes once per pass, each time with its own augmentation, and its passes may fall on
different ranks. ``samples_per_set()`` counts what each set delivered, exactly across resume.

Errors: a corrupt sample (stage ``meta``, ``audio``, ``image``) or the samples of a truncated or
corrupt shard (stage ``shard``) are skipped and counted (``error_counts()``); nothing is ever
replaced by zeros or a random other sample. When more than ``data.max_error_rate`` of the samples
seen so far failed (judged on at least 100), iteration raises :class:`DataError`. A shard that
cannot be read within ``data.s3_retries`` retries and ``data.s3_retry_seconds`` raises
:class:`ShardReadError` naming it and the endpoint (timeouts: ``data.s3_*_timeout``).

Resume: the sample stream is a pure function of (seed, epoch, rank, worker, cursor).
``state_dict()`` records the epoch, batches consumed, each worker's cursor and the plan; with the
same world size, workers, batch size and shard set, ``load_state_dict`` continues with exactly the
batches the uninterrupted run would have yielded next (consumed samples are skipped by index,
unneeded shards are not even opened). Given the states of *all* ranks (the list the trainer
saves), a changed world size, worker count or batch size resumes the epoch over exactly the
samples no rank had consumed, each once (the epoch's canonical order does not depend on the
layout; :mod:`pipeline.data.epochplan`); the resumed epoch then has fewer batches, and
``state_dict()["batches"]`` counts the rest of the full epoch as consumed. ``set_epoch(e)``
starts epoch e afresh except when e is the current, partly consumed epoch (it keeps the resumed
position); iterating a finished epoch without ``set_epoch`` starts the next one.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from dataclasses import replace

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from avbase.features import AudioFrontend, ImageSpec
from pipeline.config import DataConfig
from pipeline.data.augment import Augment, EvalView, Transform
from pipeline.data.epochplan import EpochPlan
from pipeline.data.jpeg import decode_crops
from pipeline.data.mixture import ShardSets, open_sets
from pipeline.data.shardio import ShardReadError
from pipeline.data.stream import STAGES, DataError, StreamSpec, check_error_rate, stream_batches
from pipeline.data.worker_signals import leave_stop_signals_to_the_rank

__all__ = ["DataError", "ShardLoader", "ShardReadError", "build_loader"]
log = logging.getLogger(__name__)

LAYOUT = ("world_size", "streams", "batch_size", "remainder")  # how an epoch is split


class _EpochStreams(IterableDataset):
    """The rest of one epoch of one rank; each DataLoader worker runs one stream."""

    def __init__(self, spec: StreamSpec, epoch: int, start: int, cursors: list[int]):
        self.spec, self.epoch, self.start, self.cursors = spec, epoch, start, cursors

    def __iter__(self):
        info = get_worker_info()
        plan = self.spec.plan
        worker = info.id if info else 0
        stream = (worker + self.start) % plan.streams  # the worker asked first serves batch `start`
        if info is not None:
            torch.set_num_threads(1)
        ids = [j for j in range(self.start, plan.batches) if j % plan.streams == stream]
        if ids:
            yield from stream_batches(
                self.spec, self.epoch, stream, self.cursors[stream], ids, shared=info is not None
            )


class ShardLoader:
    """Batches of one rank: {"image" [B,3,S,S], "audio" [B,1,F,T] (time-major [B,1,T,F]),
    "key" list[str], "label" int64 [B] (-1 unlabelled; multi-label sets: multi-hot float32 [B, C]),
    "padded" bool [B] (a sample this rank already yielded this epoch: a pad copy or a refill)};
    see the module docstring. A ``transform`` (the dense tasks') replaces the default
    :class:`~pipeline.data.augment.Augment` and adds its own fields.

    One iteration is live at a time: ``iter()`` closes the previous one (and its workers).
    Image and audio arrive on ``device``: images cross to it as uint8 and are normalised there
    (on a GPU this takes the per-sample float work off the training process's CPU). With
    ``data.decode`` = device (``auto``: when ``device`` is CUDA; training only), the workers hand
    over JPEG bytes and crop/flip parameters and the batch is decoded (batched nvJPEG), cropped
    and resized on the device; the parameters are drawn exactly as on the CPU path.
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        audio: AudioFrontend,
        image: ImageSpec,
        rank: int,
        world_size: int,
        seed: int,
        train: bool = True,
        labels: bool = False,
        device: torch.device | str = "cpu",
        view: EvalView | None = None,
        transform: Transform | None = None,
    ):
        self.cfg, self.rank, self.world_size, self.device = (
            cfg,
            rank,
            world_size,
            torch.device(device),
        )
        self.sets = open_sets(cfg, audio, labels)
        self.manifest = self.sets.manifests[0]
        self.plan = epoch_plan(cfg, self.sets, seed, world_size, train)
        defer = cfg.decode == "device" or (cfg.decode == "auto" and self.device.type == "cuda")
        self.spec = StreamSpec(
            self.sets.roots,
            self.sets.shards,
            self.plan,
            transform or Augment(audio, image, train, defer_image=defer, view=view),
            rank,
            labels,
            cfg.max_error_rate,
            cfg.s3_retries,
            cfg.s3_retry_seconds,
            (cfg.s3_connect_timeout, cfg.s3_read_timeout),
            cfg.cache_dir,
            cfg.cache_limit_gb,
            len(self.manifest["labels"]) if labels and self.manifest.get("multi_label") else 0,
        )
        self.epoch, self._batches, self._cursors = 0, 0, [0] * self.plan.streams
        self._segment, self._offset = self.plan, 0  # the current epoch's plan; batches before it
        self._errors, self._good, self._refilled = Counter({s: 0 for s in STAGES}), 0, 0
        self._per_set = [0] * len(self.sets.names)  # samples delivered per set, cumulative
        self._last_error, self._peak_rss_mb, self._peak_growth_mb, self._active = "", 0.0, 0.0, None
        self._worker_cpu: dict[int, float] = {}  # stream → CPU seconds of its worker process

    @property
    def num_samples(self) -> int:
        """Samples per epoch (a mixture's epoch size; the set's size for one set)."""
        return self.plan.num_samples

    @property
    def remainder(self) -> dict[str, int]:
        """Samples this rank repeats (``padded``) or leaves out (``dropped``) in the current
        epoch (a resumed epoch: in the rest of it)."""
        return self._segment.remainder_counts(self.rank)

    def __len__(self) -> int:
        return self.plan.batches

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning — unless it is the current, partly consumed one
        (a resumed loader keeps its position)."""
        partly = 0 < self._offset + self._batches and self._batches < self._segment.batches
        if epoch != self.epoch or not partly:
            self._start(epoch, self.plan, 0)

    def _start(self, epoch: int, segment: EpochPlan, offset: int) -> None:
        self.epoch, self._segment, self._offset = epoch, segment, offset
        self._batches, self._cursors = 0, [0] * segment.streams

    def __iter__(self):
        if self._batches >= self._segment.batches:
            self.set_epoch(self.epoch + 1)
        self.close()
        self._active = self._iterate()
        return self._active

    def _iterate(self):
        spec = replace(self.spec, plan=self._segment)
        ds = _EpochStreams(spec, self.epoch, self._batches, list(self._cursors))
        self._worker_cpu = {}
        if self.cfg.workers == 0:
            source = iter(ds)
        else:
            if self.sets.remote:
                # NOTE: fsspec clients live in reference cycles; collect this process's ones now
                # so that forked workers do not inherit (and try to close) its s3fs sessions.
                gc.collect()
            source = iter(
                DataLoader(
                    ds,
                    batch_size=None,
                    num_workers=self.cfg.workers,
                    prefetch_factor=2,
                    worker_init_fn=leave_stop_signals_to_the_rank,
                )
            )
        try:
            for batch in source:
                self._account(batch.pop("_meta"))
                batch["audio"] = batch["audio"].to(self.device)
                batch["image"] = self.spec.transform.normalise(self._images(batch["image"]))
                yield batch
        except Exception as e:
            error = worker_error(e)
            if error is e:
                raise
            raise error from e
        finally:
            del source  # shuts the workers down

    def _images(self, image: torch.Tensor | dict) -> torch.Tensor:
        """uint8 ``[B, 3, S, S]`` on the device; JPEGs handed over by the workers are decoded,
        cropped and resized there as one batch."""
        if isinstance(image, torch.Tensor):
            return image.to(self.device, non_blocking=True)
        try:
            return decode_crops(image, self.spec.transform.image.size, self.device)
        except RuntimeError as e:
            # NOTE: a worker checks only the JPEG header; a frame whose body is corrupt fails here,
            # in the batch, where it can no longer be skipped
            raise DataError(
                f"data: a frame of this batch cannot be decoded on {self.device}: {e}"
            ) from e

    def _account(self, meta: dict) -> None:
        if meta["batch"] != self._batches:
            raise RuntimeError(f"loader: got batch {meta['batch']}, expected {self._batches}")
        self._batches += 1
        self._cursors[meta["stream"]] = meta["cursor"]
        self._errors.update(meta["errors"])
        self._good += self.plan.batch_size
        self._refilled += meta["refilled"]
        for k, n in meta["sets"].items():
            self._per_set[k] += n
        self._last_error = meta["last_error"] or self._last_error
        self._peak_rss_mb = max(self._peak_rss_mb, meta["rss_mb"])
        self._peak_growth_mb = max(self._peak_growth_mb, meta["rss_growth_mb"])
        self._worker_cpu[meta["stream"]] = meta["cpu_s"]
        check_error_rate(self._errors, self._good, self.cfg.max_error_rate, self._last_error)

    def state_dict(self) -> dict:
        batches = self._offset + self._batches
        return {
            "epoch": self.epoch,
            "batches": batches,
            "offset": self._offset,
            "cursors": list(self._cursors),
            "rank": self.rank,
            "samples": batches * self.plan.batch_size * self.world_size,
            "plan": self._segment.signature(),
            "per_set": list(self._per_set),
        }

    def load_state_dict(self, sd: dict | list[dict]) -> None:
        """Resume from this rank's state (same layout) or from the states of all ranks, as
        ``state_dict()`` returned them on each rank (any layout; see the module docstring)."""
        self.close()
        states = sd if isinstance(sd, list) else [sd]
        mine = next((s for s in states if s["rank"] == self.rank), states[0])
        segment, epoch = self._segment_of(mine["plan"]), int(mine["epoch"])
        if all(getattr(segment, k) == getattr(self.plan, k) for k in LAYOUT):
            self._start(epoch, segment, int(mine["offset"]))
            self._batches = int(mine["batches"]) - self._offset
            self._cursors = [int(c) for c in mine["cursors"]]
            self._per_set = _per_set([mine], len(self._per_set))
        else:
            self._resume_elsewhere(epoch, segment, states)
            # rank 0 carries the old ranks' total: the sum over ranks stays exact
            self._per_set = _per_set(states if self.rank == 0 else [], len(self._per_set))

    def _segment_of(self, sig: dict) -> EpochPlan:
        """The plan a saved state was made with (same canonical order, or ValueError)."""
        differ = [k for k, v in self.plan.canonical().items() if sig.get(k) != v]
        if differ:
            raise ValueError(
                f"loader state: {', '.join(differ)} differ from this run's (another "
                "shard set, other weights or repeats, or data.seed/shuffle_buffer/partitions/"
                "interleave); "
                "resume with the same values"
            )
        runs = None if sig["runs"] is None else tuple(tuple(r) for r in sig["runs"])
        return replace(self.plan, runs=runs, **{k: sig[k] for k in LAYOUT})

    def _resume_elsewhere(self, epoch: int, old: EpochPlan, states: list[dict]) -> None:
        """Plan the rest of ``epoch`` over the samples that no rank of ``old`` consumed."""
        by_rank = {s["rank"]: [int(c) for c in s["cursors"]] for s in states}
        done = int(states[0]["batches"]) - int(states[0]["offset"])
        if len(by_rank) < old.world_size:
            log.warning(
                "loader: resuming epoch %d from %d of %d ranks' states; the others' "
                "positions are derived from the batch count (exact unless samples "
                "failed there)",
                epoch,
                len(by_rank),
                old.world_size,
            )
        cursors = [
            by_rank.get(r)
            or [old.batch_size * old.stream_batches(m, before=done) for m in range(old.streams)]
            for r in range(old.world_size)
        ]
        try:
            segment = replace(self.plan, runs=old.remaining(cursors))
        except ValueError as e:  # too few samples left for this layout
            log.warning("loader: epoch %d: %s; the epoch counts as complete", epoch, e)
            self._start(epoch, self.plan, 0)
            self._batches = len(self)
            return
        self._start(epoch, segment, len(self) - segment.batches)
        log.info(
            "loader: resuming epoch %d at another layout: %d samples left in %d batches",
            epoch,
            segment.span,
            segment.batches,
        )

    def samples_per_set(self) -> dict[str, int]:
        """Samples this rank delivered from each set (by set name: its path's last component,
        :func:`pipeline.data.mixture.set_names`), cumulative over epochs and exact across a
        resume; pad repeats and refills count. The run's total is the sum over ranks — after a
        resume at another world size, rank 0 carries the old ranks' counts."""
        return dict(zip(self.sets.names, self._per_set, strict=True))

    def error_counts(self) -> dict[str, int]:
        """Samples skipped per stage (shard | meta | audio | image), cumulative in this process."""
        return dict(self._errors)

    def stats(self) -> dict:
        """Samples delivered, refills, remainder counts, last error, the workers' peak RSS and
        its peak growth after start (MiB; sampled per batch), and the CPU seconds the current
        iteration's workers have used."""
        return {
            "samples": self._good,
            "refilled": self._refilled,
            **self.remainder,
            "last_error": self._last_error,
            "peak_worker_rss_mb": round(self._peak_rss_mb, 1),
            "peak_worker_rss_growth_mb": round(self._peak_growth_mb, 1),
            "worker_cpu_s": round(sum(self._worker_cpu.values()), 3),
        }

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None


def worker_error(e: Exception) -> Exception:
    """``e`` with the message the worker raised it with: DataLoader re-raises a worker's
    exception with "Caught X in DataLoader worker process N" and the worker's traceback as its
    message, which would hide the one line that names the shard."""
    text, name = str(e), type(e).__name__
    if not text.startswith(f"Caught {name} in DataLoader worker"):
        return e
    lines = text.rstrip().splitlines()
    for i in range(len(lines) - 1, 0, -1):
        head, sep, first = lines[i].partition(": ")
        if sep and head.rsplit(".", 1)[-1] == name:
            try:
                return type(e)("\n".join([first, *lines[i + 1 :]]))
            except Exception:  # noqa: BLE001 - an exception type with another signature
                return e
    return e


def _per_set(states: list[dict], sets: int) -> list[int]:
    """The per-set sample counts of ``states`` summed (zeros where a state has none)."""
    total = [0] * sets
    for state in states:
        for k, n in enumerate(state.get("per_set") or [0] * sets):
            total[k] += int(n)
    return total


def epoch_plan(
    cfg: DataConfig, sets: ShardSets, seed: int, world_size: int, train: bool
) -> EpochPlan:
    """The epoch plan of ``cfg`` over the shards of ``sets`` (one stream per worker)."""
    return EpochPlan(
        sets.shard_sizes,
        seed,
        world_size,
        max(cfg.workers, 1),
        cfg.batch_size,
        cfg.remainder,
        shuffle=train,
        buffer=cfg.shuffle_buffer,
        partitions=cfg.partitions,
        interleave=cfg.interleave,
        sets=sets.plan_sets,
    )


def shard_loader(
    data: DataConfig,
    mcfg,
    rank: int,
    world_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    train: bool = True,
    labels: bool = False,
    **kwargs,
) -> ShardLoader:
    """The loader of ``rank`` over ``data.shards`` with the audio / image spec of ``mcfg`` (an
    ``AVMAEConfig``: its ``frontend`` and ``image``); reads and checks the manifest."""
    return build_loader(
        data,
        audio=mcfg.frontend,
        image=mcfg.image,
        rank=rank,
        world_size=world_size,
        seed=seed,
        train=train,
        labels=labels,
        device=device,
        **kwargs,
    )


def build_loader(cfg: DataConfig, **kwargs) -> ShardLoader:
    """The loader of ``rank`` for ``cfg.shards``; see :class:`ShardLoader` (``view``: which
    evaluation view an eval loader yields, multi-clip evaluation)."""
    if cfg.shards == "":
        raise ValueError(
            "data.shards: empty — set it to a shard-set directory or s3://bucket/prefix"
        )
    return ShardLoader(cfg, **kwargs)
