"""AVMAE: masked audio-visual autoencoder around the DeepAVFusion encoder (REFERENCE.md §3).

Laid out like MAE's ``models_mae.py``: one encoder, one plain ``MAEDecoder`` per modality, and a
``forward`` that reads encode → decode image → decode audio → losses.
NOTE: our state-dict keys name each decoder as a submodule (``image_decoder.embed.weight``); the
official release keeps its parts at top level (``image_decoder_embed.weight``).
``model.checkpoints.adapt_keys`` maps one to the other, in both directions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .deepavfusion import DeepAVFusion, EncoderOutput
from .keys import adapt_keys
from .masking import Mask, mask_from_spec, random_masking
from .presets import AVMAEConfig
from .vit import DEFAULT_EPS, Block, init_linear_and_norm, sincos_pos_embed_2d


class AVMAEOutput(NamedTuple):
    """Losses and predictions (a NamedTuple, so that DeepSpeed ZeRO-3 hooks see the tensors)."""

    loss: Tensor  # fp32 scalar, loss_image + loss_audio
    loss_image: Tensor  # fp32 scalar, MSE over removed image patches
    loss_audio: Tensor
    pred_image: Tensor  # [B, Ni, p·p·3] predictions for every patch (original order)
    pred_audio: Tensor  # [B, Na, p·p]
    mask_image: Tensor  # [B, Ni], 1 = removed
    mask_audio: Tensor  # [B, Na], 1 = removed


class MAEDecoder(nn.Module):
    """Plain MAE decoder of one modality (REFERENCE §3.3): kept + fusion tokens → every patch.

    ``forward(x [B, K, D], x_fusion [B, F, D], ids_restore [B, L]) → [B, L, patch_dim]``.
    """

    def __init__(self, cfg: AVMAEConfig, grid: tuple[int, int], patch_dim: int):
        super().__init__()
        dim = cfg.decoder_dim
        self.grid = grid
        self.grad_checkpointing = cfg.activation_checkpointing
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # NOTE: trainable and weight-decayed, although the official comment calls it fixed.
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        self.embed = nn.Linear(cfg.embed_dim, dim)
        self.blocks = nn.ModuleList(
            Block(dim, cfg.decoder_num_heads, cfg.decoder_mlp_ratio, DEFAULT_EPS, cfg.attn_impl)
            for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=DEFAULT_EPS)
        self.pred = nn.Linear(dim, patch_dim)

    def reset_tokens(self) -> None:
        """Sin-cos positions and a mask token drawn from N(0, 0.02)."""
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid)[None])
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, x: Tensor, x_fusion: Tensor, ids_restore: Tensor) -> Tensor:
        """1. embed kept and fusion tokens with the same Linear;
        2. append L − K mask tokens and unshuffle each sample with its own ids_restore;
        3. add positions (patches only), prepend the fusion tokens, run the blocks;
        4. drop the F fusion tokens, norm, predict each patch's pixels / mel bins.
        """
        x, x_fusion = self.embed(x), self.embed(x_fusion)
        b, k, dim = x.shape
        x = torch.cat((x, self.mask_token.expand(b, ids_restore.shape[1] - k, -1)), dim=1)
        x = x.gather(1, ids_restore[..., None].expand(-1, -1, dim))
        x = torch.cat((x_fusion, x + self.pos_embed), dim=1)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.pred(self.norm(x[:, x_fusion.shape[1] :]))


def _accept_official_keys(state_dict: dict, prefix: str, *_) -> None:
    """``load_state_dict`` pre-hook: official-layout decoder keys (``image_decoder_blocks.0.…``, as
    in the release and in checkpoints written before the decoders were submodules) are renamed to
    ours in place, so DeepSpeed resume and plain ``load_state_dict`` take either layout."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    renamed = adapt_keys({k[len(prefix) :]: state_dict.pop(k) for k in keys}, "ours")
    state_dict.update({prefix + k: v for k, v in renamed.items()})


class AVMAE(nn.Module):
    """Pre-training model: ``forward(image [B,3,H,W], audio [B,1,F,T]) → AVMAEOutput``."""

    def __init__(self, cfg: AVMAEConfig):
        super().__init__()
        self.config = cfg
        self.norm_pix_loss = cfg.norm_pix_loss
        self.grid = {"image": cfg.image_grid, "audio": cfg.audio_grid}
        self.chans = {"image": cfg.image_in_chans, "audio": cfg.audio_in_chans}
        self.mask_ratio = {"image": cfg.image_mask_ratio, "audio": cfg.audio_mask_ratio}
        self.patch_size = cfg.patch_size
        self.encoder = DeepAVFusion(cfg)
        # Official construction order (audio first): it fixes the draws of a seeded initialisation.
        self.audio_decoder = MAEDecoder(cfg, cfg.audio_grid, cfg.patch_size**2 * cfg.audio_in_chans)
        self.image_decoder = MAEDecoder(cfg, cfg.image_grid, cfg.patch_size**2 * cfg.image_in_chans)
        self.reset_decoder_parameters()
        self._register_load_state_dict_pre_hook(_accept_official_keys)

    def reset_decoder_parameters(self) -> None:
        """Sin-cos decoder positions, mask tokens N(0, 0.02), xavier Linears (not the encoder).

        Draw order as in the official ``initialize_weights``: image then audio mask token, then
        the Linears in construction order.
        """
        self.image_decoder.reset_tokens()
        self.audio_decoder.reset_tokens()
        self.audio_decoder.apply(init_linear_and_norm)
        self.image_decoder.apply(init_linear_and_norm)

    # ---------------------------------------------------------------- parameter groups
    def no_weight_decay(self) -> set[str]:
        """Trainable parameters exempt from weight decay: ndim ≤ 1 or a ``.bias`` (official).

        NOTE: so fusion_tokens, the mask tokens and the decoder pos-embeds *are* decayed.
        """
        return {
            n
            for n, p in self.named_parameters()
            if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias"))
        }

    def tower_parameter_names(self) -> dict[str, set[str]]:
        """Trainable parameters of the pretrained towers (LR-multiplier ramp, REFERENCE §7.3)."""
        towers = {"image": self.encoder.image, "audio": self.encoder.audio}
        return {
            m: {f"encoder.{m}.{n}" for n, p in tower.named_parameters() if p.requires_grad}
            for m, tower in towers.items()
        }

    @property
    def grad_checkpointing(self) -> bool:
        return self.encoder.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per encoder layer and per decoder block."""
        for part in (self.encoder, self.image_decoder, self.audio_decoder):
            part.grad_checkpointing = enable

    # ---------------------------------------------------------------- algorithm steps
    def patchify(self, x: Tensor, modality: str) -> Tensor:
        """``[B, C, gH·p, gW·p]`` → ``[B, gH·gW, p·p·C]``; per patch (row, column, channel), channel fastest."""
        (gh, gw), p, c = self.grid[modality], self.patch_size, self.chans[modality]
        if tuple(x.shape[1:]) != (c, gh * p, gw * p):
            raise ValueError(
                f"{modality} input: expected [B, {c}, {gh * p}, {gw * p}], got {list(x.shape)}"
            )
        return rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)

    def unpatchify(self, x: Tensor, modality: str) -> Tensor:
        """Exact inverse of ``patchify``: ``[B, gH·gW, p·p·C]`` → ``[B, C, gH·p, gW·p]``."""
        (gh, gw), p = self.grid[modality], self.patch_size
        return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=gh, w=gw, p=p, q=p)

    def forward_encoder(self, image: Tensor, audio: Tensor) -> EncoderOutput:
        """Unmasked encoder pass for downstream use: all patches + fusion tokens, pooled means."""
        return self.encoder(image, audio)

    def forward_loss(
        self, target: Tensor, pred: Tensor, mask: Tensor, norm_pix_loss: bool | None = None
    ) -> Tensor:
        """Mean per-patch MSE over removed patches, in fp32 (also under autocast).

        target, pred ``[B, L, P]``; mask ``[B, L]`` (1 = removed). norm_pix (default: the
        config's) normalises each target patch with its mean and *unbiased* variance + 1e-6.
        """
        norm_pix = self.norm_pix_loss if norm_pix_loss is None else norm_pix_loss
        # Upcast once: autocast never down-casts these element-wise ops and reductions.
        target, pred, mask = target.float(), pred.float(), mask.float()
        if norm_pix:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(
        self,
        image: Tensor,
        audio: Tensor,
        masks: Mapping[str, Mapping[str, Tensor]] | None = None,
        generator: torch.Generator | None = None,
    ) -> AVMAEOutput:
        """Masked pre-training pass.

        masks: optional per modality (``"image"``/``"audio"``) ``{ids_keep, ids_restore, mask}``
        or ``{ids_shuffle}``; missing modalities are drawn (image first, then audio) from
        ``generator`` or the global RNG.
        """
        masks = masks or {}
        mask_i = self.masks_for("image", image, masks.get("image"), generator)
        mask_a = self.masks_for("audio", audio, masks.get("audio"), generator)
        enc = self.encoder(image, audio, mask_i.ids_keep, mask_a.ids_keep)
        pred_i = self.image_decoder(enc.image, enc.fusion, mask_i.ids_restore)
        pred_a = self.audio_decoder(enc.audio, enc.fusion, mask_a.ids_restore)
        loss_i = self.forward_loss(self.patchify(image, "image"), pred_i, mask_i.mask)
        loss_a = self.forward_loss(self.patchify(audio, "audio"), pred_a, mask_a.mask)
        return AVMAEOutput(
            loss_i + loss_a, loss_i, loss_a, pred_i, pred_a, mask_i.mask, mask_a.mask
        )

    def masks_for(
        self,
        modality: str,
        x: Tensor,
        spec: Mapping[str, Tensor] | None,
        generator: torch.Generator | None,
    ) -> Mask:
        """The caller's mask for ``modality`` (validated) or a random one at the config's ratio."""
        (gh, gw), ratio = self.grid[modality], self.mask_ratio[modality]
        if spec is None:
            return random_masking(x.shape[0], gh * gw, ratio, x.device, generator)
        return mask_from_spec(spec, x.shape[0], gh * gw, ratio, x.device, modality)
