"""Reconstruction figure: frame and spectrogram — original | masked | reconstruction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def denormalise_patches(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Map norm-pix predictions back to the input scale with each target patch's statistics.

    pred, target: ``[N, P]`` (one sample's patches).
    """
    if not norm_pix:
        return pred
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)  # unbiased, as in the loss
    return pred * (var + 1e-6).sqrt() + mean


def _masked(patches: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    """Replace removed patches (mask 1 = removed) by ``fill``."""
    return torch.where(mask[:, None].bool(), torch.full_like(patches, fill), patches)


def _to_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def reconstruction_panels(
    model, image: torch.Tensor, audio: torch.Tensor, out, norm_pix: bool, mean: tuple, std: tuple
) -> Image.Image:
    """Build the 2×3 panel for sample 0 of a batch.

    image ``[B, 3, S, S]`` normalised, audio ``[B, 1, F, T]``; ``out`` is the AVMAEOutput of the
    same batch (pred_* ``[B, N, P]``, mask_* ``[B, N]``, 1 = removed); any device (drawn on CPU).
    """
    rows = []
    for kind, x, pred, mask in (
        ("image", image, out.pred_image, out.mask_image),
        ("audio", audio, out.pred_audio, out.mask_audio),
    ):
        target = model.patchify(x[:1].detach().float().cpu(), kind)[0]
        recon = denormalise_patches(pred[0].detach().float().cpu(), target, norm_pix)
        removed = mask[0].detach().cpu()
        fill = float(target.min()) if kind == "audio" else 0.0
        # original | removed patches blanked | reconstruction pasted into the removed patches
        panels = [
            target,
            _masked(target, removed, fill),
            torch.where(removed[:, None].bool(), recon, target),
        ]
        maps = [model.unpatchify(p[None], kind)[0].numpy() for p in panels]
        rows.append(_render(kind, maps, mean, std))
    width = max(r.width for r in rows)
    canvas = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height
    return canvas


def _render(kind: str, maps: list[np.ndarray], mean: tuple, std: tuple) -> Image.Image:
    if kind == "image":
        tiles = []
        for m in maps:  # [3, S, S] normalised → RGB
            rgb = m.transpose(1, 2, 0) * np.array(std) + np.array(mean)
            tiles.append(Image.fromarray(_to_uint8(rgb, 0.0, 1.0)))
    else:
        lo, hi = float(maps[0].min()), float(maps[0].max())
        tiles = [
            Image.fromarray(_to_uint8(m[0][::-1], lo, hi)).convert("RGB") for m in maps
        ]  # low freq at the bottom
    scale = max(1, 192 // tiles[0].height)
    tiles = [t.resize((t.width * scale, t.height * scale), Image.NEAREST) for t in tiles]
    row = Image.new(
        "RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), tiles[0].height), "white"
    )
    x = 0
    for t in tiles:
        row.paste(t, (x, 0))
        x += t.width + 8
    return row


def save_reconstruction(path: Path, *args, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    reconstruction_panels(*args, **kwargs).save(tmp)
    tmp.replace(path)
    return path
