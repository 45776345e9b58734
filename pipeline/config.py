"""The pretraining config tree: YAML + ``key=value`` overrides → validated dataclasses.

Built by :mod:`pipeline.typedtree`: unknown keys and wrong types are errors that name the dotted
key; ``model.*`` takes a preset plus AVMAEConfig overrides (``ModelConfig.from_mapping``). The resolved tree leaves the
process (config.yaml, checkpoints, MLflow params and artifacts) only as ``redacted_config``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from avbase.urls import redact_tree
from model.presets import AVMAEConfig, ModelConfigError, get_model_config
from pipeline.typedtree import (
    ConfigError,
    check_values,
    checked_fields,
    coerce,
    from_dict,
    raw_tree,
    to_dict,
)


@dataclass
class ModelConfig:
    """A registry preset plus ``model.<field>`` overrides of ``AVMAEConfig`` (nanoGPT's
    ``model_args → GPTConfig``): model fields, their types and range checks live only there."""

    preset: str = "debug"  # model.presets registry name
    init_image: str | None = None  # user-supplied MAE ViT-B file (CC-BY-NC, never bundled)
    init_audio: str | None = None  # user-supplied AudioMAE ViT-B file
    trust_pickle: bool = False  # allow weights_only=False for trusted tower files
    overrides: dict[str, Any] = field(
        default_factory=dict
    )  # AVMAEConfig field → value, type-checked

    def architecture(self) -> AVMAEConfig:
        """The resolved ``AVMAEConfig``; a ConfigError names the ``model.<field>`` it rejects."""
        try:
            return get_model_config(self.preset, **self.overrides)
        except ModelConfigError as e:
            raise ConfigError(f"model.{e.field}: {e.problem}") from None

    def to_plain(self) -> dict:
        """Plain form for checkpoints and MLflow: preset, every resolved AVMAEConfig field, tower
        files — so that the stored tree rebuilds the same model."""
        towers = {k: getattr(self, k) for k in ("init_image", "init_audio", "trust_pickle")}
        return {"preset": self.preset, **dataclasses.asdict(self.architecture()), **towers}

    @classmethod
    def from_mapping(cls, data: dict, prefix: str) -> ModelConfig:
        """Its own keys plus AVMAEConfig fields, each checked against that field's type; a
        dataclass-typed field (``image``) may be given in part: the preset fills the rest."""
        own = {f.name for f in dataclasses.fields(cls)} - {"overrides"}
        arch = typing.get_type_hints(AVMAEConfig)
        unknown = sorted(set(data) - own - set(arch))
        if unknown:
            raise ConfigError(
                f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(own | set(arch)))})"
            )
        cfg = cls(**checked_fields(cls, {k: v for k, v in data.items() if k in own}, prefix))
        cfg.overrides = {
            k: checked_fields(arch[k], v, f"{prefix}{k}.")
            if dataclasses.is_dataclass(arch[k])
            else coerce(arch[k], v, f"{prefix}{k}")
            for k, v in data.items()
            if k in arch
        }
        return cfg


@dataclass
class ShardSource:
    """One shard set of a mixture (an item of the ``data.shards`` list)."""

    path: str = ""  # shard-set directory or s3://bucket/prefix
    weight: float | None = None  # relative share of each epoch (on every item or on none)
    repeat: float | None = None  # without weights: passes over the set per epoch (default 1)


@dataclass
class DataConfig:
    SHORTHAND: ClassVar[str] = "shards"  # `data.train=path` sets data.train.shards
    # a shard-set directory or s3://bucket/prefix, or a mixture: a list of such paths and
    # {path, weight} or {path, repeat} items (docs/RECIPES.md "Mixtures")
    shards: str | list[str | ShardSource] = ""
    repeat: float = 1.0  # epoch size × this: passes over the set(s) per epoch (oversampling)
    batch_size: int = 8  # per-rank micro-batch
    workers: int = 2  # loader worker processes per rank
    shuffle_buffer: int = 256  # samples a stream holds to shuffle (memory: × sample size)
    interleave: int = 8  # shards a stream reads at once (see pipeline/data/epochplan.py)
    partitions: int = 8  # canonical partitions: fix the epoch order at any world size
    remainder: str = "pad"  # pad | drop: how ranks are equalised per epoch
    max_error_rate: float = 0.05  # abort when data errors exceed this fraction
    cache_dir: str | None = None  # node-local shard cache (s3:// sets)
    cache_limit_gb: float = 50.0
    s3_retries: int = 10  # retries of a failed S3 read (backoff 0.5 s doubling, ≤ 8 s)
    s3_retry_seconds: float = 60.0  # ... given up after this long without progress
    s3_connect_timeout: float = 5.0  # seconds
    s3_read_timeout: float = 8.0  # seconds without a byte: the read fails (then retried)
    decode: str = "auto"  # auto | worker | device: where training frames are decoded

    def sources(self) -> list[ShardSource]:
        """``shards`` as a list of sets (a single path: one set), checked; a ConfigError names
        the item (``data.shards[1].weight``)."""
        if self.repeat <= 0:
            raise ConfigError(f"data.repeat: must be > 0, got {self.repeat}")
        if isinstance(self.shards, str):
            return [ShardSource(self.shards)]
        if not self.shards:
            raise ConfigError("data.shards: empty list; give one or more shard sets")
        items = [_source(item, f"data.shards[{i}]") for i, item in enumerate(self.shards)]
        weighted = [item.weight is not None for item in items]
        for i, item in enumerate(items):
            key = f"data.shards[{i}]"
            if item.path in (other.path for other in items[:i]):
                raise ConfigError(f"{key}.path: {item.path!r} is listed twice")
            if any(weighted) and not weighted[i]:
                raise ConfigError(f"{key}.weight: missing; give every set a weight, or none")
            if item.weight is not None and item.repeat is not None:
                raise ConfigError(f"{key}: give weight or repeat, not both")
        return items


def _source(item: Any, key: str) -> ShardSource:
    """One ``data.shards`` item (a path, a mapping or a ShardSource), checked."""
    if isinstance(item, str):
        item = ShardSource(item)
    elif not isinstance(item, ShardSource):
        item = from_dict(ShardSource, item, key + ".")
    if not item.path:
        raise ConfigError(f"{key}.path: empty; expected a shard-set directory or s3:// URL")
    for name in ("weight", "repeat"):
        value = getattr(item, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{key}.{name}: must be > 0, got {value}")
    return item


@dataclass
class OptimConfig:
    blr: float = 1.5e-4  # lr = blr * effective_batch / 256 unless lr is set
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    epochs: int = 200
    warmup_epochs: float = 40.0
    ramp_start: float = 0.0  # pretrained-tower LR multiplier s0 → s1 over ramp_epochs
    ramp_end: float = 1.0
    ramp_epochs: float | None = None  # None: epochs / 2
    grad_clip: float = 0.0  # 0 disables clipping (official recipe)


@dataclass
class RunConfig:
    """What every DeepSpeed job (pretraining, evaluations) shares under ``train.``."""

    output_dir: str = "runs/debug"
    effective_batch_size: int | None = None  # None: batch_size * world_size (no accumulation)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    zero_stage: int = 2
    seed: int = 0
    max_steps: int | None = None  # stop early (tests, smoke runs)
    log_every: int = 10
    save_every_steps: int = 0  # 0: only at epoch ends
    keep_last: int = 2
    resume: str = "auto"  # auto | never | path to a checkpoint directory
    load_universal: bool = False  # resume from a DeepSpeed universal checkpoint (new world size)
    compile: bool = False  # torch.compile every transformer block (regional)
    compile_mode: str = (
        "default"  # default | reduce-overhead (CUDA graphs) | max-autotune-no-cudagraphs
    )


@dataclass
class TrainConfig(RunConfig):
    recon_every_steps: int = 0  # 0: only at the end


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db
    experiment: str = "avfusion"
    run_name: str | None = None
    system_metrics: bool = True
    enabled: bool = True  # false: no MLflow at all (smoke runs, benchmarks)


@dataclass
class ProbeConfig:
    shards: str | None = None  # labelled shard set for the kNN probe
    every_epochs: int = 10
    max_samples: int = 2000


@dataclass(frozen=True)
class EngineSpec:
    """What the training engine reads of a job's config (pretraining and evaluations alike)."""

    train: RunConfig
    batch_size: int  # per-rank micro-batch of the training data
    epochs: int
    grad_clip: float
    batch_key: str = "data.batch_size"  # where batch_size comes from (for error lines)
    data_key: str = "data.shards"  # where the training set comes from (for error lines)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def engine_spec(self) -> EngineSpec:
        return EngineSpec(self.train, self.data.batch_size, self.optim.epochs, self.optim.grad_clip)


def redacted_config(cfg: Any) -> dict:
    """``to_dict(cfg)`` with every URL's credentials masked (``tracking.uri``'s password, signed
    URLs): the one form in which a config tree leaves the process — ``config.yaml``, checkpoints,
    MLflow params and artifacts, exports."""
    return redact_tree(to_dict(cfg))


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read YAML at ``path`` (optional), apply ``a.b=value`` overrides, validate."""
    cfg = from_dict(Config, raw_tree(path, overrides, DataConfig.SHORTHAND))
    validate(cfg)
    return cfg


_CHOICES = {
    "data.remainder": ("pad", "drop"),
    "data.decode": ("auto", "worker", "device"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.zero_stage": (0, 1, 2, 3),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
}


def validate(cfg: Config) -> None:
    """Value checks that types cannot express; each error names its key."""
    positive = (
        "data.batch_size",
        "data.shuffle_buffer",
        "data.interleave",
        "data.partitions",
        "optim.epochs",
        "train.log_every",
        "train.max_steps",
    )
    check_values(cfg, _CHOICES, positive)
    cfg.model.architecture()
    if not 0 <= cfg.optim.warmup_epochs <= cfg.optim.epochs:
        raise ConfigError(
            f"optim.warmup_epochs: must be in [0, optim.epochs], got {cfg.optim.warmup_epochs}"
        )
    if cfg.data.workers < 0:
        raise ConfigError(f"data.workers: must be >= 0, got {cfg.data.workers}")
    cfg.data.sources()
