"""AVS segmentation, AVSBench S4 protocol (REFERENCE.md §8): encoder + AVSHead trained with
BCE-with-logits on (frame, mask) pairs, scored next to a centred prior.

Steps: training items from the loader's dense mode (one random masked frame per sample, the
release's joint crop + flip, RandomVol and audio jitter) → head on the image states of
``avs.layers`` and the last audio tokens → BCE → the engine (layer-decayed AdamW, accumulation
to ``train.effective_batch_size``, checkpoints, resume) → every masked frame of ``data.test``:
the model's sigmoid map and the prior, each into a segmentation meter → sums over ranks → metrics
and ``baseline_`` twins → overlays (frame | truth | prediction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.heads import AVSHead
from pipeline.data.dense import DenseSpec
from pipeline.engine.distributed import DistInfo
from pipeline.engine.loop import Engine
from pipeline.engine.output import RunFolder
from pipeline.eval.config import EvalConfig
from pipeline.eval.dense import DenseTask, dense_loader, score_frames
from pipeline.eval.encoder import LoadedEncoder, load_encoder
from pipeline.eval.figures import overlay_grid
from pipeline.eval.metrics.segmentation import SegmentationScores
from pipeline.eval.run import run_folder


class AVS(DenseTask):
    """Encoder + AVSHead; ``frozen``: the head alone trains (localization's ``masks`` variant)."""

    def __init__(self, cfg: EvalConfig, info: DistInfo, enc: LoadedEncoder, frozen: bool = False):
        a, mcfg = cfg.avs, enc.config
        head = AVSHead(mcfg.embed_dim, mcfg.image.size // mcfg.patch_size, a.channels)
        enc.encoder.requires_grad_(not frozen)
        spec = DenseSpec(masks=True, jitter_seconds=a.audio_jitter, augment=True)
        super().__init__(cfg, info, enc, head.to(info.device), spec)
        self.layers = [self.layer(i) for i in a.layers]

    def loader(self):
        """The training set passed ``avs.oversample`` times per epoch (AVSBench's ×10), every
        copy drawn apart (frame, crop, jitter)."""
        return dense_loader(
            self.cfg, self.info, self.mcfg, self.train_spec, True, self.cfg.avs.oversample
        )

    def forward(self, encoder, head, image: Tensor, audio: Tensor) -> Tensor:
        """``[B, S, S]`` mask logits (the release's wiring: :meth:`AVSHead.from_encoder`)."""
        return head.from_encoder(encoder(image, audio, return_layers=True), self.layers)[:, 0]

    def loss(self, engine, batch: dict) -> Tensor:
        logits = engine(*self.inputs(batch)).float()
        return F.binary_cross_entropy_with_logits(logits, batch["mask"].float().to(logits.device))

    def probabilities(self, module: nn.Module, batch: dict) -> Tensor:
        return torch.sigmoid(module(*self.inputs(batch)).float())


def train(cfg: EvalConfig, info: DistInfo, frozen: bool = False) -> tuple[AVS, Engine]:
    """The AVS model trained on ``data.train`` by the engine (the run stays open)."""
    torch.manual_seed(cfg.train.seed)  # head (and random-encoder) init
    enc = load_encoder(cfg.encoder)
    task = AVS(cfg, info, enc, frozen)
    engine = Engine(cfg.engine_spec(), info, task, run_folder(cfg, info, enc))
    engine.fit()
    return task, engine


def run(cfg: EvalConfig, info: DistInfo) -> dict:
    task, engine = train(cfg, info)
    metrics, shown = score_frames(
        task,
        engine.module,
        task.probabilities,
        SegmentationScores,
        cfg.avs.prior_sigma,
        cfg.avs.artifacts,
        by_video=True,
    )
    return finish(
        engine.folder, engine.progress.step, metrics, shown, overlay_grid, "avs_overlays.png"
    )


def finish(folder: RunFolder, step: int, metrics: dict, shown: list, draw, figure: str) -> dict:
    """Log ``eval/<name>`` metrics at ``step`` and the figure (rank 0), close the run; returns
    the metrics rounded."""
    result = {k: round(float(v), 4) for k, v in metrics.items()}
    folder.log({f"eval/{k}": v for k, v in result.items()}, step)
    if folder.info.is_main and shown:
        folder.artifact(draw(shown, folder.out / figure), "figures")
    folder.close("FINISHED")
    return result | {"steps": step}
