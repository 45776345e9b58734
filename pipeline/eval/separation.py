"""Sound separation, mix-and-separate with two sources (REFERENCE.md §8), scored with BSS Eval
(mir_eval) next to two baselines measured in the same run.

Training (per batch, on the engine): waveform windows ``w`` under a random frame's time; partner
= the batch rolled by one; mixture = ``w + partner`` (exact sum) → mixture log-mel from the mixed
waveform → encoder(frame of source 1, mixture mel) → SeparationHead over the audio states of
``separation.layers`` conditioned on the image tokens → weighted BCE against the release's ratio
target. The audio-only baseline (``audio_only``) trains the same head on its own copy of the
encoder with zero visual conditioning and a blank frame (no picture reaches the early fusion).
Scoring: test pairs from ``separation.pairs`` (a CSV of ``key_a,key_b``) or, without one, a seeded
draw of pairs from different classes; each rank scores every W-th pair (the partner clips other
ranks hold are exchanged once); the centre frame of each clip; each source's estimate =
iSTFT(mel mask → STFT bins × mixture STFT). Baselines: the mixture as both estimates; the
audio-only model.
"""

from __future__ import annotations

import copy
import csv
import logging
import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avbase.errors import AvfusionError
from model.heads import SeparationHead
from pipeline.data.augment import normalise
from pipeline.data.dense import DenseSpec
from pipeline.engine.checkpoint import gather_objects
from pipeline.engine.distributed import DistInfo
from pipeline.engine.loop import Engine
from pipeline.eval.avs import finish
from pipeline.eval.config import EvalConfig
from pipeline.eval.dense import DenseTask, all_reduce_sums, dense_loader, scoring_batches, to_uint8
from pipeline.eval.encoder import LoadedEncoder, load_encoder
from pipeline.eval.figures import spectrogram_grid
from pipeline.eval.metrics.separation import SeparationScores
from pipeline.eval.run import run_folder
from pipeline.eval.separation_audio import mix, model_input, ratio_target, separate, stft

log = logging.getLogger("avfusion.eval")
ROWS = ("model", "mixture", "audio_only")  # what is scored, in the order of the sums' rows


class Separation(DenseTask):
    """Encoder + SeparationHead (``visual``) or the audio-only baseline (blank frame, no tiles)."""

    def __init__(self, cfg: EvalConfig, info: DistInfo, enc: LoadedEncoder, visual: bool):
        enc.encoder.requires_grad_(not cfg.separation.frozen)
        mcfg = enc.config
        head = SeparationHead(mcfg.embed_dim, mcfg.audio_grid).to(info.device)
        spec = DenseSpec(waveform=True)
        super().__init__(cfg, info, enc, head, spec, name="model" if visual else "audio_only")
        self.visual, self.layers = visual, [self.layer(i) for i in cfg.separation.layers]
        self.fe = mcfg.frontend

    def forward(self, encoder, head, image: Tensor, mixture: Tensor) -> Tensor:
        """image ``[B, 3, S, S]``, mixture waveform ``[B, n]`` → mask logits ``[B, F, T]``."""
        if not self.visual:
            image = torch.zeros_like(image)
        out = encoder(image, model_input(mixture, self.fe).to(image.dtype), return_layers=True)
        return head.from_encoder(out, self.layers, self.visual)[:, 0]

    def loss(self, engine, batch: dict) -> Tensor:
        wave = batch["wave"].to(self.info.device)
        mixture = mix(wave, wave.roll(1, 0))
        target, weight = ratio_target(
            model_input(wave, self.fe)[:, 0], model_input(mixture, self.fe)[:, 0]
        )
        image = batch["image"].to(self.info.device, self.dtype)
        logits = engine(image, mixture).float()
        return F.binary_cross_entropy_with_logits(logits, target, weight=weight)

    @torch.no_grad()
    def estimate(self, module: nn.Module, image: Tensor, mixture: Tensor) -> Tensor:
        """The waveform of the source shown in ``image`` ``[B, n]``, separated from ``mixture``."""
        mask = torch.sigmoid(module(image.to(self.dtype), mixture).float())
        return separate(mask, mixture, self.fe)


def run(cfg: EvalConfig, info: DistInfo) -> dict:
    torch.manual_seed(cfg.train.seed)  # heads (and random-encoder) init
    enc = load_encoder(cfg.encoder)
    blank = LoadedEncoder(copy.deepcopy(enc.encoder), enc.config, enc.pretrain_run_id, enc.source)
    folder = run_folder(cfg, info, enc)
    models = {}
    for visual, source in ((True, enc), (False, blank)):
        task = Separation(cfg, info, source, visual)
        engine = Engine(cfg.engine_spec(), info, task, folder)
        engine.fit()
        models[task.name] = (task, engine.module)
    scored = score(cfg, info, models)
    return finish(
        folder, engine.progress.step, *scored, spectrogram_grid, "separation_spectrograms.png"
    )


# -- scoring --------------------------------------------------------------------------------


def score(cfg: EvalConfig, info: DistInfo, models: dict) -> tuple[dict, list]:
    """SDR / SIR / SAR of the model, the mixture and the audio-only model over the test pairs
    (:class:`SeparationScores` per scored system, sums over ranks)."""
    task = models["model"][0]
    clips = test_clips(cfg, info, task)
    pairs, how = test_pairs(cfg, gather_objects([(k, c[2]) for k, c in clips.items()]))
    mine = pairs[info.rank :: info.world_size]
    clips = exchange(clips, mine, pairs, info)
    scores = {row: SeparationScores(cfg.separation.silence) for row in ROWS}
    shown = []
    for _, module in models.values():
        module.eval()
    step = cfg.data.test.batch_size
    for lo in range(0, len(mine), step):
        refs, ests, mixture = pair_estimates(mine[lo : lo + step], clips, models, info.device)
        for row, est in zip(ROWS, ests, strict=True):
            scores[row].update(refs, est)
        for i in range(min(len(refs), cfg.separation.artifacts - len(shown))):
            spectra = (mixture[i], ests[0][i][0], refs[i][0])
            shown.append(tuple(_log_spec(x, task) for x in spectra))
    for s in scores.values():
        s.sums = all_reduce_sums(s.sums, info.device)
    metrics = {}
    for row, prefix in zip(ROWS, ("", "baseline_", "baseline_audio_only_"), strict=True):
        metrics.update({prefix + k: v for k, v in scores[row].result().items()})
    metrics["pairs_listed"] = len(pairs)
    log.info("separation: %d test pairs (%s); %d scored", len(pairs), how, metrics["pairs"])
    return metrics, shown if info.is_main else []


def test_clips(cfg: EvalConfig, info: DistInfo, task: Separation) -> dict[str, tuple]:
    """This rank's share of ``data.test``: key → (frame uint8 ``[3, S, S]``, centre waveform
    window ``[n]``, label)."""
    # without a pair list, pairs are drawn from two classes: the labels are read (and required)
    spec = DenseSpec(waveform=True, centre_frame=True, labels=not cfg.separation.pairs)
    loader = dense_loader(cfg, info, task.mcfg, spec, False)
    clips = {}
    for batch in scoring_batches(loader):
        pictures = to_uint8(batch["image"], task.mcfg.image)
        for row, j in enumerate(batch["sample"].tolist()):
            label = batch["label"][j]
            clips[batch["key"][j]] = (pictures[row], batch["wave"][row].cpu(), int(label))
    return clips


def test_pairs(cfg: EvalConfig, ranks: list[list[tuple[str, int]]]) -> tuple[list, str]:
    """The scored pairs ``[(key_a, key_b)]`` (the same on every rank) and how they were chosen."""
    labels = dict(kv for part in ranks for kv in part)
    path = cfg.separation.pairs
    if path:
        pairs = read_pairs(path)
        missing = sorted({k for p in pairs for k in p} - labels.keys())
        if missing:
            raise AvfusionError(
                f"{path}: {len(missing)} keys are not in data.test (first: {missing[0]!r})"
            )
        return pairs, f"listed in {path}"
    keys = sorted(labels)
    random.Random(cfg.train.seed).shuffle(keys)
    pairs, pool = [], list(keys)
    while pool:
        a = pool.pop(0)
        b = next((k for k in pool if labels[k] != labels[a]), None)
        if b is not None:
            pool.remove(b)
            pairs.append((a, b))
    if not pairs:
        raise AvfusionError(
            f"data.test: {len(keys)} clips and no two of different classes to pair; "
            "list the test pairs in separation.pairs (key_a,key_b)"
        )
    return pairs, f"drawn with seed {cfg.train.seed}, sources of different classes"


def read_pairs(path: str) -> list[tuple[str, str]]:
    """``key_a,key_b`` rows (a header row is skipped; blank lines ignored)."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(x.strip() for x in r)]
    except OSError as e:
        raise AvfusionError(f"separation.pairs: {path}: {e.strerror or e}") from None
    if rows and rows[0][:2] == ["key_a", "key_b"]:
        rows = rows[1:]
    bad = next((i for i, r in enumerate(rows, 1) if len(r) < 2), None)
    if bad is not None:
        raise AvfusionError(f"{path}: line {bad}: expected key_a,key_b")
    return [(r[0].strip(), r[1].strip()) for r in rows]


def exchange(clips: dict, mine: list, pairs: list, info: DistInfo) -> dict:
    """This rank's clips plus the ones its pairs need from other ranks (one all-gather of only
    the clips some other rank's pairs name)."""
    if info.world_size == 1:
        return clips
    needed_elsewhere = {
        k for j, pair in enumerate(pairs) if j % info.world_size != info.rank for k in pair
    }
    shared = {k: v for k, v in clips.items() if k in needed_elsewhere}
    merged = dict(clips)
    for part in gather_objects(shared):
        merged.update(part)
    wanted = {k for pair in mine for k in pair}
    return {k: v for k, v in merged.items() if k in wanted}


def pair_estimates(batch: list, clips: dict, models: dict, device) -> tuple:
    """References ``[P, 2, n]`` (numpy), estimates per row of :data:`ROWS` ``[P, 2, n]`` and the
    mixtures ``[P, n]`` of the pairs in ``batch``."""
    task = models["model"][0]
    a, b = ([clips[p[i]] for p in batch] for i in (0, 1))
    wave_a, wave_b = (torch.stack([c[1] for c in x]).to(device) for x in (a, b))
    image_a, image_b = (
        normalise(torch.stack([c[0] for c in x]).to(device), task.mcfg.image) for x in (a, b)
    )
    mixture = mix(wave_a, wave_b)
    ests = [
        torch.stack([t.estimate(m, image_a, mixture), t.estimate(m, image_b, mixture)], 1)
        for t, m in (models["model"], models["audio_only"])
    ]
    ests.insert(1, torch.stack([mixture, mixture], 1))
    refs = torch.stack([wave_a, wave_b], 1).cpu().numpy()
    return refs, [e.cpu().numpy() for e in ests], mixture.cpu()


def _log_spec(wave: Tensor, task: Separation) -> Tensor:
    return torch.log10(stft(torch.as_tensor(wave)[None], task.fe).abs()[0].cpu() + 1e-4)
