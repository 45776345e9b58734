"""Streaming loader: a shard set (directory or ``s3://``) → augmented batches on every rank.

Pipeline (WebDataset shards, webdataset sample grouping): ``manifest.json`` → epoch plan
(shard shuffle with seed + epoch *before* the rank/worker split, contiguous per-rank and
per-worker ranges, a sample shuffle buffer; :mod:`pipeline.epochplan`) → each worker process
reads its shards (s3fs opened inside the worker; retries; optional node-local cache;
:mod:`pipeline.shardio`) → decodes ``mel.npy`` and the one chosen JPEG, augments
(:mod:`pipeline.augment`) and batches (:mod:`pipeline.datastream`) → torch DataLoader (batch j of
a rank comes from worker j % M, in order).

Equal steps: every rank yields exactly ``len(loader)`` batches of ``batch_size`` per epoch.
``data.remainder=pad`` repeats a rank's own samples to fill the last batch (keys stay disjoint
across ranks; ``remainder["padded"]`` per rank and epoch); ``drop`` leaves out the rank's last
samples (``remainder["dropped"]``). Samples skipped for errors are made up at the end of the
stream by re-emitting the stream's first samples (``stats()["refilled"]``).

Errors: a corrupt sample (stage ``meta``, ``audio``, ``image``) or the samples of a truncated or
corrupt shard (stage ``shard``) are skipped and counted (``error_counts()``); nothing is ever
replaced by zeros or a random other sample. When more than ``data.max_error_rate`` of the samples
seen so far failed (judged on at least 100), iteration raises :class:`DataError`. A shard that
cannot be read after ``data.s3_retries`` retries raises :class:`ShardReadError` naming it.

Resume: the sample stream is a pure function of (seed, epoch, rank, worker, cursor).
``state_dict()`` records the epoch, batches consumed and each worker's cursor; with the same world
size, workers, batch size and shard set, ``load_state_dict`` continues with exactly the batches
the uninterrupted run would have yielded next (consumed samples are skipped by index, unneeded
shards are not even opened). Otherwise (NOTE: e.g. a changed world size) it continues the same
epoch at batch ``samples // (batch_size · world_size)`` of the new plan, where ``samples`` is the
global sample count consumed in that epoch; the new plan splits the shards differently, so in that
epoch some samples may be seen twice and others not at all. ``set_epoch(e)`` starts epoch e afresh
except when e is the current, partly consumed epoch (it keeps the resumed position); iterating a
finished epoch without ``set_epoch`` starts the next one.
"""
from __future__ import annotations

import gc
import logging
from collections import Counter

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from model.presets import AudioFrontend, ImageSpec
from pipeline.augment import Augment
from pipeline.config import DataConfig
from pipeline.datastream import STAGES, DataError, StreamSpec, check_error_rate, stream_batches
from pipeline.epochplan import EpochPlan
from pipeline.shardio import ShardReadError, join, read_manifest
from preprocess.shardformat import MANIFEST, is_url

__all__ = ["DataError", "ShardLoader", "ShardReadError", "build_loader"]
log = logging.getLogger(__name__)

# Manifest ``preset.audio`` fields that fix the stored log-mel (the rest is loader-side).
STORED_AUDIO_FIELDS = ("kind", "sample_rate", "n_fft", "win_length", "hop_length", "n_mels",
                       "f_min", "f_max", "log_offset")


class _EpochStreams(IterableDataset):
    """The rest of one epoch of one rank; each DataLoader worker runs one stream."""

    def __init__(self, spec: StreamSpec, epoch: int, start: int, cursors: list[int]):
        self.spec, self.epoch, self.start, self.cursors = spec, epoch, start, cursors

    def __iter__(self):
        info = get_worker_info()
        plan = self.spec.plan
        worker = info.id if info else 0
        stream = (worker + self.start) % plan.streams    # the worker asked first serves batch `start`
        if info is not None:
            torch.set_num_threads(1)
        ids = [j for j in range(self.start, plan.batches) if j % plan.streams == stream]
        if ids:
            yield from stream_batches(self.spec, self.epoch, stream, self.cursors[stream], ids,
                                      shared=info is not None)


class ShardLoader:
    """Batches of one rank: {"image" [B,3,S,S], "audio" [B,1,F,T] (time-major [B,1,T,F]),
    "key" list[str], "label" int64 [B] (-1 unlabelled)}; see the module docstring.

    One iteration is live at a time: ``iter()`` closes the previous one (and its workers).
    Image and audio arrive on ``device``: images cross to it as uint8 and are normalised there
    (on a GPU this takes the per-sample float work off the training process's CPU).
    """

    def __init__(self, cfg: DataConfig, *, audio: AudioFrontend, image: ImageSpec, rank: int,
                 world_size: int, seed: int, train: bool = True, labels: bool = False,
                 device: torch.device | str = "cpu"):
        self.cfg, self.rank, self.world_size, self.device = cfg, rank, world_size, torch.device(device)
        self.manifest = read_manifest(cfg.shards)
        _check_manifest(self.manifest, cfg.shards, audio, labels)
        self.plan = EpochPlan(tuple(s["num_samples"] for s in self.manifest["shards"]), seed,
                              world_size, max(cfg.workers, 1), cfg.batch_size, cfg.remainder,
                              shuffle=train, buffer=cfg.shuffle_buffer)
        self.spec = StreamSpec(cfg.shards, self.manifest["shards"], self.plan,
                               Augment(audio, image, train), rank, labels, cfg.max_error_rate,
                               cfg.s3_retries, cfg.cache_dir, cfg.cache_limit_gb)
        self.epoch, self._batches, self._cursors = 0, 0, [0] * self.plan.streams
        self._errors, self._good, self._refilled = Counter({s: 0 for s in STAGES}), 0, 0
        self._last_error, self._peak_rss_mb, self._peak_growth_mb, self._active = "", 0.0, 0.0, None
        self._worker_cpu: dict[int, float] = {}       # stream → CPU seconds of its worker process

    @property
    def num_samples(self) -> int:
        return self.manifest["num_samples"]

    @property
    def remainder(self) -> dict[str, int]:
        """Samples this rank repeats (``padded``) or leaves out (``dropped``) per epoch."""
        return self.plan.remainder_counts(self.rank)

    def __len__(self) -> int:
        return self.plan.batches

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning — unless it is the current, partly consumed one
        (a resumed loader keeps its position)."""
        if epoch != self.epoch or not 0 < self._batches < len(self):
            self.epoch, self._batches, self._cursors = epoch, 0, [0] * self.plan.streams

    def __iter__(self):
        if self._batches >= len(self):
            self.set_epoch(self.epoch + 1)
        self.close()
        self._active = self._iterate()
        return self._active

    def _iterate(self):
        ds = _EpochStreams(self.spec, self.epoch, self._batches, list(self._cursors))
        self._worker_cpu = {}
        if self.cfg.workers == 0:
            source = iter(ds)
        else:
            if is_url(self.cfg.shards):
                # NOTE: fsspec clients live in reference cycles; collect this process's ones now
                # so that forked workers do not inherit (and try to close) its s3fs sessions.
                gc.collect()
            source = iter(DataLoader(ds, batch_size=None, num_workers=self.cfg.workers,
                                     prefetch_factor=2))
        try:
            for batch in source:
                self._account(batch.pop("_meta"))
                batch["audio"] = batch["audio"].to(self.device)
                batch["image"] = self.spec.augment.normalise(batch["image"].to(self.device))
                yield batch
        finally:
            del source                                   # shuts the workers down

    def _account(self, meta: dict) -> None:
        if meta["batch"] != self._batches:
            raise RuntimeError(f"loader: got batch {meta['batch']}, expected {self._batches}")
        self._batches += 1
        self._cursors[meta["stream"]] = meta["cursor"]
        self._errors.update(meta["errors"])
        self._good += self.plan.batch_size
        self._refilled += meta["refilled"]
        self._last_error = meta["last_error"] or self._last_error
        self._peak_rss_mb = max(self._peak_rss_mb, meta["rss_mb"])
        self._peak_growth_mb = max(self._peak_growth_mb, meta["rss_growth_mb"])
        self._worker_cpu[meta["stream"]] = meta["cpu_s"]
        check_error_rate(self._errors, self._good, self.cfg.max_error_rate, self._last_error)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self._batches, "cursors": list(self._cursors),
                "samples": self._batches * self.plan.batch_size * self.world_size,
                "plan": self.plan.signature()}

    def load_state_dict(self, sd: dict) -> None:
        self.close()
        self.epoch = int(sd["epoch"])
        if sd["plan"] == self.plan.signature():
            self._batches, self._cursors = int(sd["batches"]), [int(c) for c in sd["cursors"]]
            return
        k = min(int(sd["samples"]) // (self.plan.batch_size * self.world_size), len(self))
        log.warning("loader: resuming epoch %d with a different plan (%s → %s): continuing at "
                    "batch %d of %d by sample count", self.epoch, sd["plan"], self.plan.signature(),
                    k, len(self))
        self._batches = k
        self._cursors = [self.plan.batch_size * self.plan.stream_batches(m, before=k)
                         for m in range(self.plan.streams)]

    def error_counts(self) -> dict[str, int]:
        """Samples skipped per stage (shard | meta | audio | image), cumulative in this process."""
        return dict(self._errors)

    def stats(self) -> dict:
        """Samples delivered, refills, remainder counts, last error, the workers' peak RSS and
        its peak growth after start (MiB; sampled per batch), and the CPU seconds the current
        iteration's workers have used."""
        return {"samples": self._good, "refilled": self._refilled, **self.remainder,
                "last_error": self._last_error, "peak_worker_rss_mb": round(self._peak_rss_mb, 1),
                "peak_worker_rss_growth_mb": round(self._peak_growth_mb, 1),
                "worker_cpu_s": round(sum(self._worker_cpu.values()), 3)}

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None


def _check_manifest(manifest: dict, root: str, audio: AudioFrontend, labels: bool) -> None:
    url = join(root, MANIFEST)
    stored = manifest.get("preset", {}).get("audio", {})
    for field in STORED_AUDIO_FIELDS:
        if field in stored and stored[field] != getattr(audio, field):
            raise ValueError(f"{url}: preset.audio.{field} is {stored[field]!r} but the model's "
                             f"{audio.name!r} audio front end needs {getattr(audio, field)!r} "
                             f"(rebuild the shards with --preset {audio.name})")
    if labels and not manifest.get("labels"):
        raise ValueError(f"{url}: no 'labels' — the shard set is unlabelled, but labels were requested")


def build_loader(cfg: DataConfig, *, audio: AudioFrontend, image: ImageSpec, rank: int,
                 world_size: int, seed: int, train: bool = True, labels: bool = False,
                 device: torch.device | str = "cpu") -> ShardLoader:
    """The loader of ``rank`` for ``cfg.shards``; see :class:`ShardLoader`."""
    if not cfg.shards:
        raise ValueError("data.shards: empty — set it to a shard-set directory or s3://bucket/prefix")
    return ShardLoader(cfg, audio=audio, image=image, rank=rank, world_size=world_size,
                       seed=seed, train=train, labels=labels, device=device)
