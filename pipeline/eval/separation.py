"""Sound separation, mix-and-separate with two sources (REFERENCE.md §8), scored with BSS Eval
(mir_eval) next to two baselines measured in the same run.

Training (per batch): waveform windows ``w`` (3 s at the frame time) and frames; partner =
the batch rolled by one; mixture = ``w + partner`` (exact sum) → mixture log-mel from the mixed
waveform (on the training device) → encoder(frame of source 1, mixture mel) → SeparationHead
(the release's UNet) over the audio states of ``separation.layers`` conditioned on the image
tokens → weighted BCE against the release's ratio target. The audio-only baseline trains the same head with zero
visual conditioning and a blank frame (so no picture reaches the early-fusion encoder).
Scoring (centre frame of each test clip, pairs (i, i+1) within a batch): each source's estimate
= iSTFT(mel mask → STFT bins × mixture STFT); :class:`SeparationScores` (BSS Eval of both sources,
no permutation; a pair is skipped when a reference or an estimate has energy below
``separation.silence``, per scored system) → ``sdr``, ``sir``, ``sar``, ``pairs``.
Baselines: the mixture as both estimates; the audio-only head.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.heads import SeparationHead
from pipeline.distributed import DistInfo
from pipeline.eval.config import EvalConfig
from pipeline.eval.dense_data import DenseSpec, batches, dense_items
from pipeline.eval.dense_figures import spectrogram_grid
from pipeline.eval.dense_loop import DenseModel, DenseRun
from pipeline.eval.metrics.separation import SeparationScores
from pipeline.eval.separation_audio import mix, model_input, ratio_target, separate, stft

# reported name → estimates: the model, the mixture as both estimates, the audio-only head
SYSTEMS = {"model": "model", "baseline": "baseline", "baseline_audio_only": "audio_only"}


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
    scores = {name: SeparationScores(cfg.separation.silence) for name in SYSTEMS}
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
        est["baseline"] = [mixture, mixture]
        refs = torch.stack((wave, partner), 1)  # [B, 2, T]
        for name, system in SYSTEMS.items():
            scores[name].update(refs, torch.stack(est[system], 1))
        shown += [
            tuple(_log_spec(x, r) for x in (mixture[i], est["model"][0][i], wave[i]))
            for i in range(min(len(wave), cfg.separation.artifacts - len(shown)))
        ]
    metrics = {}
    for name, acc in scores.items():
        acc.sums = r.reduce(acc.sums)
        prefix = "" if name == "model" else f"{name}_"
        metrics.update({prefix + k: v for k, v in acc.result().items()})
    figures = (
        [spectrogram_grid(shown, r.out / "separation_spectrograms.png")]
        if r.info.is_main and shown
        else []
    )
    return r.finish(metrics, figures)


def _log_spec(wave: Tensor, r: DenseRun) -> Tensor:
    return torch.log10(stft(wave[None], r.audio).abs()[0].cpu() + 1e-4)
