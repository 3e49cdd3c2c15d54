"""Building blocks shared by the towers: layer norm, multi-head attention, MLP, residual block.

Each module calls the ops layer through `self.ops`, which XCLIP.use_ops() sets on every module,
so a backend swaps the arithmetic without a second copy of the model.
"""

from __future__ import annotations

import torch
from torch import nn

from .ops import REFERENCE


class LayerNorm(nn.LayerNorm):
    ops = REFERENCE

    def forward(self, x):
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps)

    def add_forward(self, x, delta):
        """(x + delta, norm(x + delta)): a residual add and this norm, one op for fused backends."""
        return self.ops.add_layer_norm(x, delta, self.weight, self.bias, self.eps)


class MLP(nn.Module):
    ops = REFERENCE

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.ops.mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)


def split_heads(x, heads: int):
    # [N, L, D] -> [N, H, L, dh]
    n, seq, d = x.shape
    return x.view(n, seq, heads, d // heads).transpose(1, 2)


def merge_heads(x):
    # [N, H, L, dh] -> [N, L, D]
    n, h, seq, dh = x.shape
    return x.transpose(1, 2).reshape(n, seq, h * dh)


class SelfAttention(nn.Module):
    """Multi-head self-attention with q, k, v fused in one projection (rows q, k, v in order)."""

    ops = REFERENCE

    def __init__(self, width: int, heads: int):
        super().__init__()
        assert width % heads == 0, f"width {width} is not divisible by {heads} heads"
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x, causal: bool = False):
        # x: [N, L, D]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h = self.heads
        o = self.ops.attention(split_heads(q, h), split_heads(k, h), split_heads(v, h), causal=causal)
        return self.out(merge_heads(o))


class ResidualBlock(nn.Module):
    """Pre-norm transformer block of CLIP: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, eps: float):
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = MLP(width, 4 * width)

    def forward(self, x, causal: bool = False):
        x, h = self.ln_2.add_forward(x, self.attn(self.ln_1(x), causal=causal))   # x + attn(...), ln_2
        return x + self.mlp(h)


def init_linear(m: nn.Module, std: float = 0.02):
    for mod in m.modules():
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, std=std)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.LayerNorm):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)


def causal_eot_trim(ids: torch.Tensor) -> int:
    """Length to keep of a [K, C] batch of CLIP token ids: up to the last EOT of any row.

    With a causal mask, tokens after a row's EOT cannot change the EOT's features, so the
    padding beyond the longest label is dead work (exact, not an approximation).
    """
    return int(ids.argmax(dim=-1).max()) + 1
