"""Typed config of the downstream evaluations (built by :mod:`pipeline.typedtree` like :mod:`pipeline.config`).

The sections the engine reads are pretraining's own types: ``train`` is a ``RunConfig``
(effective batch, precision, ZeRO stage, compile, resume, …), ``data.train`` / ``data.test`` are
``DataConfig`` loaders, ``tracking`` a ``TrackingConfig`` — so every task runs through the same
engine (:meth:`EvalConfig.engine_spec`) and the same loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import DataConfig, EngineSpec, RunConfig, TrackingConfig
from pipeline.typedtree import ConfigError, check_values, from_dict, lookup, raw_tree

TASK_NAMES = ("linear", "finetune", "avs", "separation", "localization")


@dataclass
class EncoderConfig:
    checkpoint: str | None = None  # training checkpoint dir | .safetensors export | official .pth
    preset: str | None = None  # model preset; None: the training config's, else detected
    init: str = "pretrained"  # pretrained | random (baseline: same architecture, no weights)
    fusion_arch: str | None = None  # release fusion overrides for official files (see REFERENCE §8)
    fusion_mlp_ratio: float | None = None
    fusion_attn_ratio: float | None = None
    trust_pickle: bool = False  # allow weights_only=False for a trusted official file
    drop_path: float = 0.0  # stochastic depth in towers and fusion blocks (fine-tune 0.2)


@dataclass
class EvalDataConfig:
    """The training and the test set, each a full loader config (a path alone means its shards:
    ``data.train=shards/vggsound-train``)."""

    train: DataConfig = field(default_factory=DataConfig)  # labelled set the heads train on
    test: DataConfig = field(default_factory=DataConfig)  # labelled set scored (same class list)


@dataclass
class EvalOptimConfig:
    name: str = "lars"  # lars (linear probe) | adamw (fine-tune, dense tasks)
    blr: float = 0.1  # lr = blr * effective_batch / 256 unless lr is set
    lr: float | None = None
    momentum: float = 0.9  # LARS
    trust_coefficient: float = 0.001  # LARS
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    weight_decay: float = 0.0
    layer_decay: float = 1.0  # layer-wise LR decay (fine-tune 0.75); 1.0 disables it
    epochs: int = 60
    warmup_epochs: float = 10.0
    grad_clip: float = 0.0


@dataclass
class EvalTrainConfig(RunConfig):
    output_dir: str = "runs/eval"
    zero_stage: int = 0  # precision: the linear probe runs fp32, no AMP


@dataclass
class EvalScheduleConfig:
    every_epochs: int = 10  # evaluate on data.test every N epochs and at the end
    clips: int = 1  # final evaluation: clips per video (scores averaged per video)
    frames: int = 1  # final evaluation: frames per clip
    random_vol_db: float = 0.0  # final evaluation: test-time RandomVol ±dB (release: 2 for dense)
    top_k: int = 5  # classes per video in predictions.jsonl


@dataclass
class ClassificationConfig:
    loss: str = "auto"  # auto (ce single-label, bce multi-label) | ce | bce
    label_smoothing: float = 0.0  # fine-tune 0.1
    mixup: float = 0.0  # mixup α (fine-tune 1.0); 0 disables
    class_freq_division: bool | None = (
        None  # the release's loss / class frequencies (REFERENCE §8);
    )
    # None: on for finetune (as released), off for linear
    bias_init: str = "zero"  # zero | class_freq (fine-tune: log((f+1e-3)/(1-f+1e-3)))
    batchnorm: bool = True  # linear probe: BatchNorm1d(affine=False) before each head


# Dense tasks. Layer lists index the encoder's layers (negative: from the end), so the
# recipes' ViT-B lists ([0, 3, 7, 11], [11, 8, 5, 2, 0]) and the debug model's are written alike.


@dataclass
class AVSConfig:
    layers: list[int] = field(
        default_factory=lambda: [0, 3, 7, 11]
    )  # image layers feeding the UNet (first = top)
    channels: list[int] = field(
        default_factory=lambda: [768, 384, 192, 128]
    )  # UNet widths per scale (REFERENCE §8)
    oversample: int = 10  # passes over the training set per epoch
    audio_jitter: float = 0.99  # training: audio window centre ± seconds
    prior_sigma: float = 0.25  # centred Gaussian baseline (fraction of side)
    artifacts: int = 8  # overlays logged (predicted vs true mask)


@dataclass
class SeparationConfig:
    layers: list[int] = field(
        default_factory=lambda: [11, 8, 5, 2, 0]
    )  # audio layers, finest scale first (release: deepest → finest, the last at the UNet bottom)
    frozen: bool = False  # train the heads only (the release fine-tunes the encoder too)
    pairs: str | None = None  # CSV of test pairs key_a,key_b; None: a seeded draw (other classes)
    silence: float = 1e-5  # skip a pair when a reference or estimate has energy Σx² below this
    artifacts: int = 4  # spectrogram panels logged


@dataclass
class LocalizationConfig:
    layer: int = -1  # image layer whose patch tokens are compared
    embedding: str = "audio"  # audio | fusion: the clip's query embedding
    trained: str = "none"  # none | contrastive | masks (docs/EVAL.md)
    prior_sigma: float = 0.25
    artifacts: int = 8  # heatmaps on frames logged


@dataclass
class EvalConfig:
    task: str = "linear"  # linear | finetune | avs | separation | localization
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    optim: EvalOptimConfig = field(default_factory=EvalOptimConfig)
    train: EvalTrainConfig = field(default_factory=EvalTrainConfig)
    eval: EvalScheduleConfig = field(default_factory=EvalScheduleConfig)
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    avs: AVSConfig = field(default_factory=AVSConfig)
    separation: SeparationConfig = field(default_factory=SeparationConfig)
    localization: LocalizationConfig = field(default_factory=LocalizationConfig)
    # the pretraining experiment by default, so `avfusion runs compare` shows runs and their evaluations
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def engine_spec(self) -> EngineSpec:
        return EngineSpec(
            self.train,
            self.data.train.batch_size,
            self.optim.epochs,
            self.optim.grad_clip,
            batch_key="data.train.batch_size",
            data_key="data.train.shards",
        )


_CHOICES = {
    "task": TASK_NAMES,
    "encoder.init": ("pretrained", "random"),
    "optim.name": ("lars", "adamw"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.zero_stage": (0, 1, 2, 3),
    "classification.loss": ("auto", "ce", "bce"),
    "classification.bias_init": ("zero", "class_freq"),
    "localization.embedding": ("audio", "fusion"),
    "localization.trained": ("none", "contrastive", "masks"),
}


def load_eval_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> EvalConfig:
    """Read YAML at ``path``, apply ``a.b=value`` overrides, validate (errors name the key)."""
    cfg = from_dict(EvalConfig, raw_tree(path, overrides, DataConfig.SHORTHAND))
    validate(cfg)
    return cfg


def validate(cfg: EvalConfig) -> None:
    """Value checks that types cannot express; each error names its key."""
    positive = (
        "data.train.batch_size",
        "data.test.batch_size",
        "optim.epochs",
        "train.log_every",
        "eval.every_epochs",
    )
    check_values(cfg, _CHOICES, positive + ("eval.clips", "eval.frames", "eval.top_k"))
    if not 0 <= cfg.optim.warmup_epochs <= cfg.optim.epochs:
        raise ConfigError(
            f"optim.warmup_epochs: must be in [0, optim.epochs], got {cfg.optim.warmup_epochs}"
        )
    if cfg.optim.name == "lars" and cfg.train.zero_stage != 0:
        # NOTE: ZeRO 1-3 hand the optimizer flattened partitions, so LARS's per-tensor norms
        # (and its "no adaptation for 1-D tensors" rule) would be wrong; the probe's 6 tensors
        # need no sharding anyway.
        raise ConfigError(
            f"train.zero_stage: LARS needs whole tensors; use 0 with optim.name=lars "
            f"(got {cfg.train.zero_stage})"
        )
    if not 0 < cfg.optim.layer_decay <= 1:
        raise ConfigError(f"optim.layer_decay: must be in (0, 1], got {cfg.optim.layer_decay}")
    if not 0 <= cfg.encoder.drop_path < 1:
        raise ConfigError(f"encoder.drop_path: must be in [0, 1), got {cfg.encoder.drop_path}")
    if cfg.encoder.init == "pretrained" and not cfg.encoder.checkpoint:
        raise ConfigError(
            "encoder.checkpoint: required with encoder.init=pretrained "
            "(a training checkpoint directory, a .safetensors export or an official file)"
        )
    if cfg.encoder.init == "random" and not (cfg.encoder.preset or cfg.encoder.checkpoint):
        raise ConfigError(
            "encoder.preset: required with encoder.init=random and no encoder.checkpoint"
        )
    for key in ("data.train", "data.test"):
        if not lookup(cfg, key).shards:
            raise ConfigError(f"{key}: empty — set it to a labelled shard set (directory or s3://)")
