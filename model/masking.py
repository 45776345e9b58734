"""Per-sample random masking and caller-supplied masks (REFERENCE.md §3.1).

A ``Mask`` for L patches keeping K: ``ids_keep [B, K]`` in the encoder's (shuffled) order,
``ids_restore [B, L]`` the inverse permutation, ``mask [B, L]`` with 1 = removed, 0 = kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Mask:
    ids_keep: Tensor  # [B, K] int64, shuffled order (never re-sorted)
    ids_restore: Tensor  # [B, L] int64
    mask: Tensor  # [B, L] float, 1 = removed


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """``int(L · (1 − r))`` (truncation, official): 49 of 196 at 0.75, 19 of 96 at 0.8."""
    return int(num_patches * (1 - mask_ratio))


def mask_from_shuffle(ids_shuffle: Tensor, len_keep: int) -> Mask:
    """Mask from a per-sample permutation ``ids_shuffle [B, L]`` (first ``len_keep`` are kept)."""
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = (ids_restore >= len_keep).float()  # 0 at the kept positions, in original order
    return Mask(ids_shuffle[:, :len_keep], ids_restore, mask)


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> Mask:
    """Noise U[0, 1) ``[B, L]`` → ids_shuffle = argsort(noise); keep the first ``int(L(1 − r))``.

    Without ``generator`` the noise comes from the global RNG on ``device`` (official draw);
    with one, from that generator on its own device, then moved to ``device``.
    """
    if generator is None:
        noise = torch.rand(batch, num_patches, device=device)
    else:
        noise = torch.rand(batch, num_patches, generator=generator, device=generator.device).to(
            device
        )
    return mask_from_shuffle(torch.argsort(noise, dim=1), num_kept(num_patches, mask_ratio))


def mask_from_spec(
    spec: Mapping[str, Tensor],
    batch: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str,
    name: str,
) -> Mask:
    """A caller-supplied mask: ``{ids_shuffle}`` or ``{ids_keep, ids_restore, mask}``, validated.

    ``ids_shuffle`` keeps the ratio's ``int(L(1 − r))`` patches; a full triple may keep any K,
    but must be self-consistent (``mask == (ids_restore >= K)`` and ``ids_keep`` the first K of
    the permutation). Raises ``ValueError`` naming the modality on any mismatch.
    """
    if "ids_shuffle" in spec:
        ids_shuffle = _permutation(
            spec["ids_shuffle"], batch, num_patches, f"{name}.ids_shuffle", device
        )
        return mask_from_shuffle(ids_shuffle, num_kept(num_patches, mask_ratio))
    missing = {"ids_keep", "ids_restore", "mask"} - set(spec)
    if missing:
        raise ValueError(
            f"masks[{name!r}]: expected ids_shuffle or ids_keep, ids_restore and mask; "
            f"missing {', '.join(sorted(missing))}"
        )
    ids_restore = _permutation(
        spec["ids_restore"], batch, num_patches, f"{name}.ids_restore", device
    )
    ids_keep = spec["ids_keep"].to(device=device, dtype=torch.long)
    if ids_keep.dim() != 2 or ids_keep.shape[0] != batch or ids_keep.shape[1] > num_patches:
        raise ValueError(
            f"masks[{name!r}].ids_keep: expected [{batch}, K<={num_patches}], got {list(ids_keep.shape)}"
        )
    expected = mask_from_shuffle(torch.argsort(ids_restore, dim=1), ids_keep.shape[1])
    mask = spec["mask"].to(device)
    if mask.shape != expected.mask.shape or not torch.equal(mask.float(), expected.mask):
        raise ValueError(
            f"masks[{name!r}].mask: expected [{batch}, {num_patches}] with 1 exactly at "
            "the removed positions (ids_restore >= K)"
        )
    if not torch.equal(ids_keep, expected.ids_keep):
        raise ValueError(
            f"masks[{name!r}].ids_keep: not the first K entries of argsort(ids_restore)"
        )
    return Mask(ids_keep, ids_restore, mask.float())


def _permutation(ids: Tensor, batch: int, num_patches: int, what: str, device) -> Tensor:
    ids = ids.to(device=device, dtype=torch.long)
    if ids.shape != (batch, num_patches):
        raise ValueError(
            f"masks {what}: expected shape [{batch}, {num_patches}], got {list(ids.shape)}"
        )
    if not torch.equal(
        ids.sort(dim=1).values, torch.arange(num_patches, device=device).expand(batch, -1)
    ):
        raise ValueError(f"masks {what}: each row must be a permutation of 0..{num_patches - 1}")
    return ids
