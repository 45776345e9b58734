"""AVMAE: masked audio-visual autoencoder around the DeepAVFusion encoder (REFERENCE.md §3).

State-dict keys equal the official ``AVMAE.state_dict()``: the encoder under ``encoder.`` and
per-modality decoder parts at top level (``image_decoder_embed``, ``audio_decoder_blocks.N…``).
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import partialmethod
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .deepavfusion import DeepAVFusion, EncoderOutput
from .masking import Mask, mask_from_spec, random_masking
from .presets import AVMAEConfig
from .vit import DEFAULT_EPS, Block, init_linear_and_norm, sincos_pos_embed_2d

MODALITIES = ("image", "audio")


class AVMAEOutput(NamedTuple):
    """Losses and predictions (a NamedTuple, so that DeepSpeed ZeRO-3 hooks see the tensors)."""

    loss: Tensor         # fp32 scalar, loss_image + loss_audio
    loss_image: Tensor   # fp32 scalar, MSE over removed image patches
    loss_audio: Tensor
    pred_image: Tensor   # [B, Ni, p·p·3] predictions for every patch (original order)
    pred_audio: Tensor   # [B, Na, p·p]
    mask_image: Tensor   # [B, Ni], 1 = removed
    mask_audio: Tensor   # [B, Na], 1 = removed


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
        self.grad_checkpointing = cfg.activation_checkpointing
        dec = cfg.decoder_dim
        # Official registration order (audio first); only the state-dict order depends on it.
        for m in ("audio", "image"):
            n = self.grid[m][0] * self.grid[m][1]
            self.register_parameter(f"{m}_decoder_mask_token", nn.Parameter(torch.zeros(1, 1, dec)))
            # NOTE: trainable and weight-decayed, although the official comment calls it fixed.
            self.register_parameter(f"{m}_decoder_pos_embed", nn.Parameter(torch.zeros(1, n, dec)))
        self.encoder = DeepAVFusion(cfg)
        for m in ("audio", "image"):
            setattr(self, f"{m}_decoder_embed", nn.Linear(cfg.embed_dim, dec))
            setattr(self, f"{m}_decoder_blocks", nn.ModuleList(
                Block(dec, cfg.decoder_num_heads, cfg.decoder_mlp_ratio, DEFAULT_EPS, cfg.attn_impl)
                for _ in range(cfg.decoder_depth)))
            setattr(self, f"{m}_decoder_norm", nn.LayerNorm(dec, eps=DEFAULT_EPS))
            setattr(self, f"{m}_decoder_pred",
                    nn.Linear(dec, cfg.patch_size ** 2 * self.chans[m]))
        self.reset_decoder_parameters()

    def reset_decoder_parameters(self) -> None:
        """Sin-cos decoder positions, mask tokens N(0, 0.02), xavier Linears (not the encoder)."""
        for m in MODALITIES:
            pos = getattr(self, f"{m}_decoder_pos_embed")
            with torch.no_grad():
                pos.copy_(sincos_pos_embed_2d(pos.shape[-1], self.grid[m])[None])
            nn.init.normal_(getattr(self, f"{m}_decoder_mask_token"), std=0.02)
        for name, module in self.named_children():
            if name != "encoder":
                module.apply(init_linear_and_norm)

    # ---------------------------------------------------------------- parameter groups
    def no_weight_decay(self) -> set[str]:
        """Trainable parameters exempt from weight decay: ndim ≤ 1 or a ``.bias`` (official).

        NOTE: so fusion_tokens, the mask tokens and the decoder pos-embeds *are* decayed.
        """
        return {n for n, p in self.named_parameters()
                if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias"))}

    def tower_parameter_names(self) -> dict[str, set[str]]:
        """Trainable parameters of the pretrained towers (LR-multiplier ramp, REFERENCE §7.3)."""
        return {m: {f"encoder.{m}.{n}" for n, p in getattr(self.encoder, m).named_parameters()
                    if p.requires_grad} for m in MODALITIES}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per encoder layer and per decoder block."""
        self.grad_checkpointing = self.encoder.grad_checkpointing = enable

    # ---------------------------------------------------------------- algorithm steps
    random_masking = staticmethod(random_masking)

    def patchify(self, x: Tensor, modality: str) -> Tensor:
        """``[B, C, gH·p, gW·p]`` → ``[B, gH·gW, p·p·C]``; per patch (row, column, channel), channel fastest."""
        b, c, h, w = x.shape
        (gh, gw), p = self.grid[modality], self.patch_size
        if (c, h, w) != (self.chans[modality], gh * p, gw * p):
            raise ValueError(f"{modality} input: expected [B, {self.chans[modality]}, {gh * p}, {gw * p}], "
                             f"got {list(x.shape)}")
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: Tensor, modality: str) -> Tensor:
        """Exact inverse of ``patchify``: ``[B, gH·gW, p·p·C]`` → ``[B, C, gH·p, gW·p]``."""
        (gh, gw), p, c = self.grid[modality], self.patch_size, self.chans[modality]
        x = x.reshape(x.shape[0], gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], c, gh * p, gw * p)

    patchify_image = partialmethod(patchify, modality="image")
    patchify_audio = partialmethod(patchify, modality="audio")
    unpatchify_image = partialmethod(unpatchify, modality="image")
    unpatchify_audio = partialmethod(unpatchify, modality="audio")

    def forward_encoder(self, image: Tensor, audio: Tensor) -> EncoderOutput:
        """Unmasked encoder pass for downstream use: all patches + fusion tokens, pooled means."""
        return self.encoder(image, audio)

    def forward_decoder(self, x: Tensor, x_fusion: Tensor, ids_restore: Tensor, modality: str) -> Tensor:
        """Kept tokens x ``[B, K, D]`` + fusion tokens ``[B, F, D]`` → predictions ``[B, L, p·p·C]``.

        Embed both with the same Linear; append L−K mask tokens, unshuffle with ids_restore, add
        positions (patches only), prepend the fusion tokens, run the blocks, drop the first F.
        """
        embed = getattr(self, f"{modality}_decoder_embed")
        x, x_fusion = embed(x), embed(x_fusion)
        b, k, dim = x.shape
        mask_tokens = getattr(self, f"{modality}_decoder_mask_token").expand(b, ids_restore.shape[1] - k, -1)
        x = torch.cat((x, mask_tokens), dim=1)
        x = x.gather(1, ids_restore[..., None].expand(-1, -1, dim))
        x = torch.cat((x_fusion, x + getattr(self, f"{modality}_decoder_pos_embed")), dim=1)
        for block in getattr(self, f"{modality}_decoder_blocks"):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = x[:, x_fusion.shape[1]:]
        return getattr(self, f"{modality}_decoder_pred")(getattr(self, f"{modality}_decoder_norm")(x))

    def forward_loss(self, target: Tensor, pred: Tensor, mask: Tensor,
                     norm_pix_loss: bool | None = None) -> Tensor:
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

    def forward(self, image: Tensor, audio: Tensor, masks: Mapping[str, Mapping[str, Tensor]] | None = None,
                generator: torch.Generator | None = None) -> AVMAEOutput:
        """Masked pre-training pass.

        masks: optional per modality (``"image"``/``"audio"``) ``{ids_keep, ids_restore, mask}``
        or ``{ids_shuffle}``; missing modalities are drawn (image first, then audio) from
        ``generator`` or the global RNG.
        """
        inputs = {"image": image, "audio": audio}
        drawn = {m: self.masks_for(m, inputs[m], (masks or {}).get(m), generator) for m in MODALITIES}
        enc = self.encoder(image, audio, drawn["image"].ids_keep, drawn["audio"].ids_keep)
        tokens = {"image": enc.image, "audio": enc.audio}
        pred, loss = {}, {}
        for m in MODALITIES:
            pred[m] = self.forward_decoder(tokens[m], enc.fusion, drawn[m].ids_restore, m)
            loss[m] = self.forward_loss(self.patchify(inputs[m], m), pred[m], drawn[m].mask)
        return AVMAEOutput(loss["image"] + loss["audio"], loss["image"], loss["audio"],
                           pred["image"], pred["audio"], drawn["image"].mask, drawn["audio"].mask)

    def masks_for(self, modality: str, x: Tensor, spec: Mapping[str, Tensor] | None,
                  generator: torch.Generator | None) -> Mask:
        """The caller's mask for ``modality`` (validated) or a random one at the config's ratio."""
        (gh, gw), ratio = self.grid[modality], self.mask_ratio[modality]
        if spec is None:
            return self.random_masking(x.shape[0], gh * gw, ratio, x.device, generator)
        return mask_from_spec(spec, x.shape[0], gh * gw, ratio, x.device, modality)
