"""The shard sets of ``data.shards`` (one set, or a weighted mixture): manifests, checks, names,
and how many samples each set gives per epoch.

**Epoch size rule** (docs/RECIPES.md "Mixtures"), with S_k the samples of set k and R =
``data.repeat``:

- **weights** (``{path, weight}`` on every item): the epoch has T = round(R · Σ S_k) samples and
  set k gives n_k = T · w_k / Σ w (largest-remainder rounding: ⌊T · w_k / Σ w⌋, plus one for the
  sets with the largest fractional parts, ties to the earlier set, so that Σ n_k = T);
- **no weights** (paths, ``{path, repeat}``): set k gives n_k = round(R · repeat_k · S_k)
  (repeat_k defaults to 1), and T = Σ n_k. A single path is one set with n = S (R = 1).

How the plan draws n_k samples from a set — whole passes plus a subset drawn afresh each epoch —
is step 0 of :mod:`pipeline.data.epochplan`. Mosaic Streaming's ``Stream(proportion=…)`` and
``Stream(repeat=…)`` are the same two modes (relative shares or absolute repeats, not both).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from avbase.features import AudioFrontend
from avbase.shardformat import MANIFEST, is_url
from pipeline.config import DataConfig, ShardSource
from pipeline.data.epochplan import Sets
from pipeline.data.shardio import join, read_manifest

# Manifest ``preset.audio`` fields that fix the stored log-mel (the rest is loader-side).
STORED_AUDIO_FIELDS = (
    "kind",
    "sample_rate",
    "n_fft",
    "win_length",
    "hop_length",
    "n_mels",
    "f_min",
    "f_max",
    "log_offset",
)


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


def epoch_counts(sizes: list[int], sources: list[ShardSource], repeat: float = 1.0) -> list[int]:
    """n_k: samples each set gives per epoch (the module docstring's rule)."""
    if sources[0].weight is None:
        return [
            half_up(repeat * (s.repeat or 1.0) * n) for s, n in zip(sources, sizes, strict=True)
        ]
    total, weights = half_up(repeat * sum(sizes)), [s.weight for s in sources]
    quotas = [total * w / sum(weights) for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda k: (counts[k] - quotas[k], k))
    for k in by_remainder[: total - sum(counts)]:
        counts[k] += 1
    return counts


def set_names(paths: list[str]) -> list[str]:
    """A metric-safe name per set: its path's last component; equal ones get ``_<list index>``."""
    base = [
        re.sub(r"[^A-Za-z0-9_.-]", "_", p.rstrip("/").rsplit("/", 1)[-1]) or "set" for p in paths
    ]
    return [f"{b}_{k}" if base.count(b) > 1 else b for k, b in enumerate(base)]


@dataclass(frozen=True)
class ShardSets:
    """The sets of one loader, in ``data.shards`` order; shard indices run over all of them."""

    paths: tuple[str, ...]
    names: tuple[str, ...]
    manifests: tuple[dict, ...]
    counts: tuple[int, ...]  # n_k: samples of set k per epoch

    @property
    def shards(self) -> list[dict]:
        return [s for m in self.manifests for s in m["shards"]]

    @property
    def roots(self) -> list[str]:
        """The set root of every shard index."""
        return [p for p, m in zip(self.paths, self.manifests, strict=True) for _ in m["shards"]]

    @property
    def shard_sizes(self) -> tuple[int, ...]:
        return tuple(s["num_samples"] for s in self.shards)

    @property
    def plan_sets(self) -> Sets:
        """The plan's ``sets``: () for one set read once (the plan of a single path)."""
        if len(self.paths) == 1 and self.counts[0] == self.manifests[0]["num_samples"]:
            return ()
        return tuple(
            (len(m["shards"]), n) for m, n in zip(self.manifests, self.counts, strict=True)
        )

    @property
    def remote(self) -> bool:
        return any(is_url(p) for p in self.paths)


def read_sets(cfg: DataConfig) -> ShardSets:
    """The sets of ``cfg.shards`` with their manifests and samples per epoch (no feature checks:
    :func:`open_sets`)."""
    sources = cfg.sources()
    manifests = [read_manifest(s.path) for s in sources]
    counts = epoch_counts([m["num_samples"] for m in manifests], sources, cfg.repeat)
    paths = tuple(s.path for s in sources)
    return ShardSets(paths, tuple(set_names(list(paths))), tuple(manifests), tuple(counts))


def open_sets(cfg: DataConfig, audio: AudioFrontend, labels: bool) -> ShardSets:
    """:func:`read_sets`, checked: the first set against the model's audio front end, the others
    against the first (one line naming the set that differs)."""
    sets = read_sets(cfg)
    check_manifest(sets.manifests[0], sets.paths[0], audio, labels)
    for k in range(1, len(sets.paths)):
        check_same_features(list(sets.manifests), list(sets.paths), k, labels)
    return sets


def check_manifest(manifest: dict, root: str, audio: AudioFrontend, labels: bool) -> None:
    url = join(root, MANIFEST)
    stored = manifest.get("preset", {}).get("audio", {})
    for field in STORED_AUDIO_FIELDS:
        if field in stored and stored[field] != getattr(audio, field):
            raise ValueError(
                f"{url}: preset.audio.{field} is {stored[field]!r} but the model's "
                f"{audio.name!r} audio front end needs {getattr(audio, field)!r} "
                f"(rebuild the shards with --preset {audio.name})"
            )
    if labels and not manifest.get("labels"):
        raise ValueError(
            f"{url}: no 'labels' — the shard set is unlabelled, but labels were requested"
        )


def check_same_features(manifests: list[dict], paths: list[str], k: int, labels: bool) -> None:
    """Set ``k`` has the first set's stored features (and class list, when labels are read)."""
    first, mine = manifests[0], manifests[k]
    where = f"data.shards[{k}] ({join(paths[k], MANIFEST)})"
    ref = f"data.shards[0]'s ({join(paths[0], MANIFEST)})"
    a0, ak = first.get("preset", {}).get("audio", {}), mine.get("preset", {}).get("audio", {})
    for field in STORED_AUDIO_FIELDS:
        if ak.get(field) != a0.get(field):
            raise ValueError(
                f"{where}: preset.audio.{field} is {ak.get(field)!r}, not {a0.get(field)!r} as "
                f"in {ref}; every set of a mixture needs the same feature preset"
            )
    if labels and (mine.get("labels"), mine.get("multi_label")) != (
        first.get("labels"),
        first.get("multi_label"),
    ):
        raise ValueError(f"{where}: its class list differs from {ref}; labels cannot be mixed")
