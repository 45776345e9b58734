"""ViT building blocks with timm / MAE semantics and official key names (REFERENCE.md §1).

Key names follow timm's ``VisionTransformer`` pieces the official code uses: ``patch_embed.proj``,
``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``pos_embed``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TOWER_EPS = 1e-6  # LayerNorm eps in the ViT towers and their final norms (REFERENCE §1.1)
DEFAULT_EPS = 1e-5  # nn.LayerNorm default: fusion blocks, fusion_norm, decoders (REFERENCE §9.A.5)


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float, impl: str = "sdpa") -> Tensor:
    """softmax(q kᵀ · scale) v per head.

    q ``[B, H, Nq, hq]``, k ``[B, H, Nk, hq]``, v ``[B, H, Nk, hv]`` → ``[B, H, Nq, hv]``.
    ``impl="naive"`` materialises the ``[B, H, Nq, Nk]`` attention matrix (benchmark baseline,
    timm's explicit path); ``"sdpa"`` uses the fused kernel. They agree to ≈1e-6 in fp32.
    """
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    attn = (q * scale) @ k.transpose(-2, -1)
    return attn.softmax(dim=-1) @ v


# NOTE: head split/merge stay torch reshapes: einops' rearrange measured ~3× their per-call cost
# (≈ 30 µs more on CPU, ~300 calls per forward); patchify/unpatchify use einops (equal time).
def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``[B, N, H·h]`` → ``[B, H, N, h]``."""
    b, n, _ = x.shape
    return x.reshape(b, n, num_heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``[B, H, N, h]`` → ``[B, N, H·h]``."""
    return x.transpose(1, 2).flatten(2)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> Tensor:
    """Fixed 2-D sin-cos table ``[gH·gW, dim]`` in float32 (REFERENCE §1.3, MAE convention).

    Token t = r·gW + c gets ``[sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)]`` with
    ω_i = 10000^(−i/Q), Q = dim/4: the column (width / time) index fills the first half.
    Computed in float32 like the official numpy code, so tables match it to float rounding.
    """
    assert dim % 4 == 0, dim
    q = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(q, dtype=torch.float32) / q)
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float32),
        torch.arange(grid[1], dtype=torch.float32),
        indexing="ij",
    )
    parts = []
    for pos in (cols.reshape(-1), rows.reshape(-1)):
        angles = pos[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth on a residual branch ``[B, ...]``: each sample's branch is zeroed with
    probability ``rate`` and the kept ones are scaled by 1 / (1 − rate) (timm ``DropPath``)."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


def init_linear_and_norm(m: nn.Module) -> None:
    """Xavier-uniform Linear weights with zero bias; LayerNorm 1 / 0 (REFERENCE §1.5)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class Mlp(nn.Module):
    """fc2(GELU(fc1(x))), exact (erf) GELU; ``[B, N, D]`` → ``[B, N, D]``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention: one ``qkv`` Linear split [q | k | v], scale hd^−0.5."""

    def __init__(self, dim: int, num_heads: int, attn_impl: str = "sdpa"):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[B, N, D]`` → ``[B, N, D]``."""
        b, n, d = x.shape
        q, k, v = (
            self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        return self.proj(merge_heads(attention(q, k, v, self.scale, self.attn_impl)))


class Block(nn.Module):
    """Pre-norm transformer block (timm ``Block``): x += attn(LN1 x); x += mlp(LN2 x).

    ``drop_path`` (a plain attribute, 0 in pre-training) is the stochastic-depth rate of both
    residual branches; downstream fine-tuning sets it.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, eps: float, attn_impl: str = "sdpa"
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, attn_impl)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = 0.0

    def forward(self, x: Tensor) -> Tensor:
        """x ``[B, N, D]`` → ``[B, N, D]``."""
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchEmbed(nn.Module):
    """Conv2d(C → D, kernel = stride = p); ``[B, C, gH·p, gW·p]`` → ``[B, gH·gW, D]`` row-major."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """One encoder tower: patch embedding, frozen sin-cos positions, blocks, final norm.

    No cls token. The blocks are driven by the fusion encoder (``DeepAVFusion``), which
    interleaves them with the fusion blocks, so this module only prepares the tokens.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        in_chans: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        patch_size: int,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        self.grid = grid
        self.patch_embed = PatchEmbed(in_chans, dim, patch_size)
        # NOTE: a Parameter with requires_grad=False (not a buffer), as in the official code, so
        # the state dict holds it and official checkpoints load strictly.
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, TOWER_EPS, attn_impl) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=TOWER_EPS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Sin-cos positions, xavier patch kernel on its ``(D, C·p·p)`` view, xavier Linears.

        NOTE: the patch-embed conv bias keeps PyTorch's default init (REFERENCE §9.A.14).
        """
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid)[None])
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        self.apply(init_linear_and_norm)

    def prepare_tokens(self, x: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """Patch-embed, add the full position table, then keep ``ids_keep`` in the given order.

        x ``[B, C, H, W]``, ids_keep ``[B, K]`` (shuffled order, never re-sorted) → ``[B, K, D]``
        (``[B, N, D]`` without ids_keep).
        """
        x = self.patch_embed(x) + self.pos_embed
        if ids_keep is not None:
            x = x.gather(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        return x
