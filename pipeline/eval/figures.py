"""Pictures of the dense tasks, as PNG files for MLflow: mask overlays, heatmaps on frames,
spectrogram panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

GREEN, RED = np.array([0, 255, 0]), np.array([255, 0, 0])


def overlay_grid(rows: list[tuple], path: Path) -> Path:
    """One row per (image uint8 [3,S,S], true mask [S,S], predicted probability [S,S]):
    frame | truth in green | prediction (p > 0.5) in red."""
    tiles = []
    for image, truth, prob in rows:
        frame = image.permute(1, 2, 0).numpy().astype(np.float32)
        tiles.append(
            np.concatenate(
                [frame, _tint(frame, truth.numpy(), GREEN), _tint(frame, prob.numpy() > 0.5, RED)],
                1,
            )
        )
    return _save(np.concatenate(tiles, 0), path)


def heatmap_grid(rows: list[tuple], path: Path) -> Path:
    """One row per (image uint8 [3,S,S], true mask [S,S], heatmap [S,S]): frame | truth | heatmap
    (min-max normalised, red = high) blended over the frame."""
    tiles = []
    for image, truth, heat in rows:
        frame = image.permute(1, 2, 0).numpy().astype(np.float32)
        h = heat.numpy().astype(np.float32)
        h = (h - h.min()) / max(float(h.max() - h.min()), 1e-7)
        hot = np.stack([255 * h, 64 * (1 - h), 255 * (1 - h)], -1)
        tiles.append(
            np.concatenate([frame, _tint(frame, truth.numpy(), GREEN), 0.5 * frame + 0.5 * hot], 1)
        )
    return _save(np.concatenate(tiles, 0), path)


def spectrogram_grid(rows: list[tuple[torch.Tensor, ...]], path: Path) -> Path:
    """One row per tuple of log-magnitude spectrograms ``[F, T]`` (e.g. mixture | estimate |
    reference), each scaled to the row's range, low frequencies at the bottom."""
    tiles = []
    for specs in rows:
        lo = min(float(s.min()) for s in specs)
        hi = max(float(s.max()) for s in specs)
        panels = [(s.flip(0).numpy() - lo) / max(hi - lo, 1e-7) * 255 for s in specs]
        tiles.append(np.concatenate([np.repeat(p[..., None], 3, -1) for p in panels], 1))
    return _save(np.concatenate(tiles, 0), path)


def _tint(frame: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Blend ``colour`` over the frame by half the mask's value (0 / 0.5 / 1, or bool)."""
    weight = 0.5 * np.asarray(mask, np.float32)[..., None]
    return (1 - weight) * frame + weight * colour


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
    return path
