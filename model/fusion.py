"""The three DeepAVFusion fusion blocks (REFERENCE.md §2.3–2.6), official key names.

One registry, :data:`FUSION_ATTENTION` (``fusion_arch`` → attention class): a new variant is a
class decorated with ``@register("name")`` taking ``(dim, num_heads, attn_ratio, num_tokens,
attn_impl)``; config validation (``model.presets``) and :func:`build_fusion_block` read it.

Every block is called as ``block(xf, xi, xa)``: fusion tokens ``[B, F, D]`` (F = 32 in the
releases), image tokens ``[B, Ni, D]``, audio tokens ``[B, Na, D]`` → new fusion tokens ``[B, F, D]``.
D = embed dim, H = heads, d = int(D · attn_ratio). All LayerNorms here use eps 1e-5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vit import DEFAULT_EPS, Mlp, attention, drop_path, merge_heads, split_heads

FUSION_ATTENTION: dict[str, type[nn.Module]] = {}


def register(name: str):
    """Class decorator: make an attention class the fusion variant ``name``."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        FUSION_ATTENTION[name] = cls
        return cls

    return add


class FusionAttention(nn.Module):
    """What every registered variant is: built from ``(dim, num_heads, attn_ratio, num_tokens,
    attn_impl)`` — its layers in :meth:`layers` (d = int(D · attn_ratio)) — and called as
    ``attn(m [B, F, D], normed image [B, Ni, D], normed audio [B, Na, D]) → [B, F, D]``."""

    swaps_norms = False  # True: the block normalises image with norm1_aud and audio with norm1_img

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_ratio: float,
        num_tokens: tuple[int, int, int],
        attn_impl: str,
    ):
        super().__init__()
        self.num_heads, self.num_tokens, self.attn_impl = num_heads, tuple(num_tokens), attn_impl
        self.layers(dim, int(dim * attn_ratio))

    def layers(self, dim: int, d: int) -> None:
        raise NotImplementedError


class CrossAttention(nn.Module):
    """Full-width cross-attention (``attn_v`` / ``attn_a``): ``q`` on x1, ``kv`` [k | v] on x2.

    x1 ``[B, N1, D]``, x2 ``[B, N2, D]`` → ``[B, N1, D]``; H heads of D/H, scale (D/H)^−0.5.
    """

    def __init__(self, dim: int, num_heads: int, attn_impl: str):
        super().__init__()
        self.num_heads, self.attn_impl = num_heads, attn_impl
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        q = split_heads(self.q(x1), self.num_heads)
        k, v = (split_heads(t, self.num_heads) for t in self.kv(x2).chunk(2, dim=-1))
        return self.proj(merge_heads(attention(q, k, v, self.scale, self.attn_impl)))


@register("factorized_mmi")
class FactorizedAttention(FusionAttention):
    """``factorized_mmi`` (the released variant, REFERENCE §2.4).

    1. aggregation: visual tokens attend to image patches (``attn_v``), audio tokens to audio
       patches (``attn_a``); the outputs *replace* the aggregation tokens (no inner residual);
    2. pairs: all nv·na (visual i, audio j) pairs, visual-major, features [v_i ‖ a_j] → ``[B, nv·na, 2D]``;
    3. the nf fusion tokens attend to the pairs: q ``[B,nf,d]``, k ``[B,P,d]``, v ``[B,P,D]``.
    """

    swaps_norms = False  # name-consistent: norm1_img on image, norm1_aud on audio

    def layers(self, dim: int, d: int) -> None:
        # NOTE: scale (D/H)^−0.5 = 1/8 at ViT-B even though q/k heads are d/H wide (16 at ratio
        # 0.25); v heads stay D/H wide. Kept on purpose (REFERENCE §9.A.4).
        self.scale = (dim // self.num_heads) ** -0.5
        self.attn_v = CrossAttention(dim, self.num_heads, self.attn_impl)
        self.attn_a = CrossAttention(dim, self.num_heads, self.attn_impl)
        self.q = nn.Linear(dim, d)
        self.k = nn.Linear(dim * 2, d)
        self.v = nn.Linear(dim * 2, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, m: Tensor, ni: Tensor, na: Tensor) -> Tensor:
        """m ``[B, nf+nv+na, D]`` (normed fusion tokens), ni / na normed patches → ``[B, nf+nv+na, D]``."""
        m_f, m_v, m_a = m.split(self.num_tokens, dim=1)
        m_v, m_a = self.attn_v(m_v, ni), self.attn_a(m_a, na)
        nv, n_aud = m_v.shape[1], m_a.shape[1]
        pairs = torch.cat(
            (m_v[:, :, None].expand(-1, -1, n_aud, -1), m_a[:, None].expand(-1, nv, -1, -1)), dim=-1
        ).flatten(1, 2)
        q = split_heads(self.q(m_f), self.num_heads)
        k = split_heads(self.k(pairs), self.num_heads)
        v = split_heads(self.v(pairs), self.num_heads)
        m_f = self.proj(merge_heads(attention(q, k, v, self.scale, self.attn_impl)))
        return torch.cat((m_f, m_v, m_a), dim=1)


@register("token")
class TokenAttention(FusionAttention):
    """``token``: all fusion tokens attend to [audio ; image] patches (REFERENCE §2.5).

    q ``[B, F, d]``, kv over ``[B, Na+Ni, D]`` → ``[B, F, d]`` → proj → ``[B, F, D]``.
    """

    # NOTE (argument swap, kept): the official block normalises the image tokens with
    # ``norm1_aud`` and the audio tokens with ``norm1_img`` (REFERENCE §9.A.1).
    swaps_norms = True

    def layers(self, dim: int, d: int) -> None:
        # NOTE: scale (d/H)^−0.5 here (0.25 at ratio 0.25), unlike the other two variants.
        self.scale = (d // self.num_heads) ** -0.5
        self.q = nn.Linear(dim, d)
        self.kv = nn.Linear(dim, d * 2)
        self.proj = nn.Linear(d, dim)

    def forward(self, m: Tensor, ni: Tensor, na: Tensor) -> Tensor:
        q = split_heads(self.q(m), self.num_heads)
        kv = self.kv(torch.cat((na, ni), dim=1))
        k, v = (split_heads(t, self.num_heads) for t in kv.chunk(2, dim=-1))
        return self.proj(merge_heads(attention(q, k, v, self.scale, self.attn_impl)))


@register("dense_mmi")
class DenseAttention(FusionAttention):
    """``dense_mmi``: all fusion tokens attend to every (audio, image) token pair (REFERENCE §2.6).

    NOTE (swap inside the official attention, kept): pairs are audio-major (p = a·Ni + v) with
    features [audio ‖ image], so the first D input columns of ``kv`` act on audio.
    The ``[B, Na·Ni, 2D]`` pair tensor is never built: a Linear of a concatenation equals the
    sum of the half-projections, so kv = W_a·a + W_i·i + b is formed on ``[B, Na, Ni, 2d]``.
    """

    swaps_norms = False  # norms are name-correct; the swap is in the pair layout

    def layers(self, dim: int, d: int) -> None:
        self.scale = (dim // self.num_heads) ** -0.5  # NOTE: 1/8 from D/H, not d/H
        self.q = nn.Linear(dim, d)
        self.kv = nn.Linear(dim * 2, d * 2)
        self.proj = nn.Linear(d, dim)

    def forward(self, m: Tensor, ni: Tensor, na: Tensor) -> Tensor:
        dim = na.shape[-1]
        kv_a = F.linear(na, self.kv.weight[:, :dim])  # [B, Na, 2d]
        kv_i = F.linear(ni, self.kv.weight[:, dim:])  # [B, Ni, 2d]
        kv = (kv_a[:, :, None] + kv_i[:, None] + self.kv.bias).flatten(1, 2)  # [B, Na·Ni, 2d]
        q = split_heads(self.q(m), self.num_heads)
        k, v = (split_heads(t, self.num_heads) for t in kv.chunk(2, dim=-1))
        return self.proj(merge_heads(attention(q, k, v, self.scale, self.attn_impl)))


class FusionBlock(nn.Module):
    """Fusion-block skeleton shared by the three variants (REFERENCE §2.3).

        m = norm1_mm(xf);  x = m + attn(m, normed image, normed audio);  x += mlp(norm2(x))

    NOTE: the attention residual is added to the *normalised* tokens m, not to xf (official).
    """

    def __init__(self, attn: nn.Module, dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1_mm = nn.LayerNorm(dim, eps=DEFAULT_EPS)
        self.norm1_aud = nn.LayerNorm(dim, eps=DEFAULT_EPS)
        self.norm1_img = nn.LayerNorm(dim, eps=DEFAULT_EPS)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=DEFAULT_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = 0.0  # stochastic-depth rate of both residual branches (fine-tuning)

    def forward(self, xf: Tensor, xi: Tensor, xa: Tensor) -> Tensor:
        """xf ``[B, F, D]``, xi ``[B, Ni, D]``, xa ``[B, Na, D]`` → ``[B, F, D]``."""
        m = self.norm1_mm(xf)
        if self.attn.swaps_norms:
            ni, na = self.norm1_aud(xi), self.norm1_img(xa)
        else:
            ni, na = self.norm1_img(xi), self.norm1_aud(xa)
        x = m + drop_path(self.attn(m, ni, na), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


def build_fusion_block(
    arch: str,
    dim: int,
    num_heads: int,
    mlp_ratio: float,
    attn_ratio: float,
    num_tokens: tuple[int, int, int],
    attn_impl: str = "sdpa",
) -> FusionBlock:
    """One fusion block of the registered variant ``arch`` (:data:`FUSION_ATTENTION`)."""
    if arch not in FUSION_ATTENTION:
        raise ValueError(f"unknown fusion_arch {arch!r} ({' | '.join(FUSION_ATTENTION)})")
    attn = FUSION_ATTENTION[arch](dim, num_heads, attn_ratio, num_tokens, attn_impl)
    return FusionBlock(attn, dim, mlp_ratio)
