"""Sound separation, mix-and-separate with two sources (REFERENCE.md §8), scored with BSS Eval
(mir_eval) next to two baselines measured in the same run.

Training (per batch): waveform windows ``w`` (3 s at the frame time) and frames; partner =
the batch rolled by one; mixture = ``w + partner`` (exact sum) → mixture log-mel from the mixed
waveform (on the training device) → encoder(frame of source 1, mixture mel) → SeparationHead
(the release's UNet) over the audio states of ``separation.layers`` conditioned on the image
tokens → weighted BCE against the release's ratio target. The audio-only baseline trains the same head with zero
visual conditioning and a blank frame (so no picture reaches the early-fusion encoder).
Scoring (centre frame of each test clip, pairs (i, i+1) within a batch): each source's estimate
= iSTFT(mel mask → STFT bins × mixture STFT); SDR / SIR / SAR of both sources (no permutation),
averaged; pairs with a near-silent reference (mean power < ``separation.silence``) are skipped.
Baselines: the mixture as both estimates; the audio-only head.
"""

from __future__ import annotations

import copy
import warnings
from functools import partial

import mir_eval
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.heads import SeparationHead
from pipeline.distributed import DistInfo
from pipeline.eval.config import EvalConfig
from pipeline.eval.dense_data import DenseSpec, batches, dense_items
from pipeline.eval.dense_figures import spectrogram_grid
from pipeline.eval.dense_loop import DenseModel, DenseRun
from pipeline.eval.separation_audio import mix, model_input, ratio_target, separate, stft

METRICS = ("sdr", "sir", "sar")


def run(cfg: EvalConfig, info: DistInfo) -> dict:
    r = DenseRun(cfg, info)
    layers = [r.layer(i) for i in cfg.separation.layers]
    grid = r.mcfg.audio_grid
    r.encoder.requires_grad_(not cfg.separation.frozen)
    blank = copy.deepcopy(r.encoder)
    models = {
        name: DenseModel(
            enc,
            SeparationHead(r.mcfg.embed_dim, grid).to(info.device),
        )
        for name, enc in (("model", r.encoder), ("audio_only", blank))
    }
    spec = DenseSpec(r.size, r.audio, waveform=True, train=True)
    for name, model in models.items():
        r.train(model, spec, partial(_loss, r, layers, name == "model"), name=name)
    return _evaluate(r, models, layers)


def _mask_logits(
    r: DenseRun, m: nn.Module, layers: list[int], image: Tensor, mixture: Tensor, visual: bool
) -> Tensor:
    """``[B, n_mels, window_frames]`` mask logits for the source shown in ``image`` (the release's
    wiring: pre-norm audio states of ``layers``, the last layer's pre-norm image tokens)."""
    m = getattr(m, "module", m)
    if not visual:
        image = torch.zeros_like(image)
    out = m.encoder(image, model_input(mixture, r.audio), return_layers=True)
    return m.head.from_encoder(out, layers, visual)[:, 0]


def _loss(r: DenseRun, layers: list[int], visual: bool, m: nn.Module, batch: dict) -> Tensor:
    wave = batch["wave"].to(r.info.device)
    mixture = mix(wave, wave.roll(1, 0))
    target, weight = ratio_target(
        model_input(wave, r.audio)[:, 0], model_input(mixture, r.audio)[:, 0]
    )
    logits = _mask_logits(r, m, layers, r.image(batch), mixture, visual)
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight)


@torch.no_grad()
def _evaluate(r: DenseRun, models: dict[str, DenseModel], layers: list[int]) -> dict:
    cfg = r.cfg
    spec = DenseSpec(r.size, r.audio, waveform=True, centre_frame=True)
    sums = torch.zeros(3, 1 + len(METRICS), dtype=torch.float64)  # model, mixture, audio-only
    shown = []
    bs = max(2, cfg.data.test_batch_size or cfg.data.batch_size)
    for batch in batches(dense_items(cfg.data.test, spec, r.info.rank, r.info.world_size), bs):
        if len(batch["key"]) < 2:
            continue
        wave = batch["wave"].to(r.info.device)
        partner = wave.roll(-1, 0)
        mixture = mix(wave, partner)
        image = r.image(batch)
        est = {
            name: [
                separate(
                    torch.sigmoid(_mask_logits(r, m, layers, img, mixture, name == "model")),
                    mixture,
                    r.audio,
                )
                for img in (image, image.roll(-1, 0))
            ]
            for name, m in models.items()
        }
        for i in range(len(wave)):
            refs = torch.stack([wave[i], partner[i]]).cpu().numpy()
            if (refs**2).mean(1).min() < cfg.separation.silence:
                continue
            for row, pair in enumerate((est["model"], [mixture, mixture], est["audio_only"])):
                sums[row] += _bss(refs, torch.stack([pair[0][i], pair[1][i]]).cpu().numpy())
            if len(shown) < cfg.separation.artifacts:
                shown.append(
                    tuple(_log_spec(x, r) for x in (mixture[i], est["model"][0][i], wave[i]))
                )
    sums = r.reduce(sums)
    if sums[0, 0] == 0:
        raise ValueError("separation: no test pair with two non-silent references to score")
    means = (sums[:, 1:] / sums[:, :1]).tolist()
    metrics = dict(zip(METRICS, means[0], strict=True))
    metrics.update({f"baseline_{k}": v for k, v in zip(METRICS, means[1], strict=True)})
    metrics.update({f"baseline_audio_only_{k}": v for k, v in zip(METRICS, means[2], strict=True)})
    figures = (
        [spectrogram_grid(shown, r.out / "separation_spectrograms.png")]
        if r.info.is_main and shown
        else []
    )
    return r.finish(metrics, figures)


def _bss(refs: np.ndarray, ests: np.ndarray) -> Tensor:
    """[1, SDR, SIR, SAR] of one pair, averaged over its two sources.

    NOTE: mir_eval 0.8 marks its separation module deprecated (removal announced for 0.9); the
    pin keeps BSS Eval v3 as the release used it, and the per-call warning is silenced here only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"mir_eval\.separation\.", category=FutureWarning)
        sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(
            refs, ests, compute_permutation=False
        )
    return torch.tensor([1.0, sdr.mean(), sir.mean(), sar.mean()], dtype=torch.float64)


def _log_spec(wave: Tensor, r: DenseRun) -> Tensor:
    return torch.log10(stft(wave[None], r.audio).abs()[0].cpu() + 1e-4)
