"""DeepAVFusion early-fusion encoder (REFERENCE.md §2.1–2.2), official key names.

Two ViT towers (``image``, ``audio``) and learned ``fusion_tokens`` advanced in parallel by
per-layer ``fusion_blocks``; final norms ``image.norm``, ``audio.norm`` and ``fusion_norm``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .fusion import build_fusion_block
from .presets import AVMAEConfig
from .vit import DEFAULT_EPS, ViT, init_linear_and_norm


class EncoderOutput(NamedTuple):
    """Final-normed tokens, in ``ids_keep`` order when the pass was masked.

    image ``[B, Ni, D]``, audio ``[B, Na, D]``, fusion ``[B, F, D]`` (F = 32 in the releases);
    layers: per layer (image, audio, fusion) states before the final norms (``return_layers``).
    A NamedTuple, so that DeepSpeed ZeRO-3 can see the tensors a module returns.
    """

    image: Tensor
    audio: Tensor
    fusion: Tensor
    layers: list[tuple[Tensor, Tensor, Tensor]] | None = None

    @property
    def pooled(self) -> dict[str, Tensor]:
        """Token means ``{"image", "audio", "fusion"}`` → ``[B, D]`` (fusion averages *all* F tokens)."""
        return {
            "image": self.image.mean(1),
            "audio": self.audio.mean(1),
            "fusion": self.fusion.mean(1),
        }


class DeepAVFusion(nn.Module):
    """Encoder: ``(image [B,3,H,W], audio [B,1,F,T], ids_keep…) → EncoderOutput``."""

    def __init__(self, cfg: AVMAEConfig):
        super().__init__()
        tower = dict(
            dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            patch_size=cfg.patch_size,
            attn_impl=cfg.attn_impl,
        )
        self.fusion_tokens = nn.Parameter(torch.zeros(1, sum(cfg.num_fusion_tkns), cfg.embed_dim))
        self.image = ViT(cfg.image_grid, cfg.image_in_chans, **tower)
        self.audio = ViT(cfg.audio_grid, cfg.audio_in_chans, **tower)
        # NOTE: layers without fusion (official ``fusion_layers`` other than 'all') hold None, so the
        # block indices, hence the state-dict keys, stay those of the official ModuleList.
        self.fusion_blocks = nn.ModuleList(
            build_fusion_block(
                cfg.fusion_arch,
                cfg.embed_dim,
                cfg.fusion_num_heads,
                cfg.fusion_mlp_ratio,
                cfg.fusion_attn_ratio,
                cfg.num_fusion_tkns,
                cfg.attn_impl,
            )
            if i in cfg.fusion_layer_ids
            else None
            for i in range(cfg.depth)
        )
        self.fusion_norm = nn.LayerNorm(cfg.embed_dim, eps=DEFAULT_EPS)
        self.grad_checkpointing = cfg.activation_checkpointing
        nn.init.normal_(self.fusion_tokens, std=0.02)
        self.fusion_blocks.apply(init_linear_and_norm)

    def forward(
        self,
        image: Tensor,
        audio: Tensor,
        image_ids_keep: Tensor | None = None,
        audio_ids_keep: Tensor | None = None,
        return_layers: bool = False,
    ) -> EncoderOutput:
        """image ``[B, C, H, W]``, audio ``[B, 1, F, T]``, ids_keep ``[B, K]`` (shuffled order).

        Without ids_keep the pass is unmasked (all patches).
        """
        xi = self.image.prepare_tokens(image, image_ids_keep)
        xa = self.audio.prepare_tokens(audio, audio_ids_keep)
        xf = self.fusion_tokens.expand(xi.shape[0], -1, -1)
        layers = []
        for index in range(len(self.fusion_blocks)):
            if self.grad_checkpointing and torch.is_grad_enabled():
                xi, xa, xf = checkpoint(self.layer, index, xi, xa, xf, use_reentrant=False)
            else:
                xi, xa, xf = self.layer(index, xi, xa, xf)
            if return_layers:
                layers.append((xi, xa, xf))
        return EncoderOutput(
            self.image.norm(xi),
            self.audio.norm(xa),
            self.fusion_norm(xf),
            layers if return_layers else None,
        )

    def layer(
        self, index: int, xi: Tensor, xa: Tensor, xf: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One encoder layer; all three streams advance from the previous layer's states.

        Each tower block sees ``[fusion ; own patches]`` and its fusion outputs are dropped; the
        fusion block reads the patch tokens from *before* this layer (REFERENCE §2.2).
        """
        block_i, block_a = self.image.blocks[index], self.audio.blocks[index]
        block_f = self.fusion_blocks[index]
        if block_f is None:
            return block_i(xi), block_a(xa), xf
        nf = xf.shape[1]
        yi = block_i(torch.cat((xf, xi), dim=1))[:, nf:]
        ya = block_a(torch.cat((xf, xa), dim=1))[:, nf:]
        return yi, ya, block_f(xf, xi, xa)
