"""What every evaluation shares around the engine: its output folder and MLflow run."""

from __future__ import annotations

from pipeline.config import redacted_config
from pipeline.engine.distributed import DistInfo
from pipeline.engine.output import RunFolder
from pipeline.eval.config import EvalConfig
from pipeline.eval.encoder import LoadedEncoder


def run_folder(cfg: EvalConfig, info: DistInfo, enc: LoadedEncoder) -> RunFolder:
    """``train.output_dir`` with the redacted config; MLflow tags name the task, the encoder
    and, for an encoder from a pretraining checkpoint, the pretraining run it evaluates."""
    tags = {"avfusion.task": cfg.task, "avfusion.encoder": enc.source}
    if enc.pretrain_run_id:
        tags["avfusion.pretrain_run_id"] = enc.pretrain_run_id
    return RunFolder(cfg.train.output_dir, redacted_config(cfg), cfg.tracking, info, tags)
