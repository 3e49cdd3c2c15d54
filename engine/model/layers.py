"""Building blocks shared by the towers: layer norm, multi-head attention, MLP, residual block.

Each module calls the ops layer through `self.ops`, which XCLIP.use_ops() sets on every module,
so a backend swaps the arithmetic without a second copy of the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import REFERENCE


class RoutedModel(nn.Module):
    """A whole model (X-CLIP, EVL) whose arithmetic goes through one ops object: use_ops() sets it
    on every module that calls ops, so a backend swaps the arithmetic without a second model."""

    def use_ops(self, ops):
        for m in self.modules():
            if hasattr(type(m), "ops"):
                m.ops = ops
        self.ops = ops
        return self


class LayerNorm(nn.LayerNorm):
    ops = REFERENCE

    def forward(self, x):
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps)

    def add_forward(self, x, delta):
        """(x + delta, norm(x + delta)): a residual add and this norm, one op for fused backends."""
        return self.ops.add_layer_norm(x, delta, self.weight, self.bias, self.eps)


class MLP(nn.Module):
    ops = REFERENCE

    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.dropout = dropout   # between the activation and fc2 (EVL's decoder); training only

    def forward(self, x):
        if self.dropout and self.training:
            h = F.linear(x, self.fc1.weight, self.fc1.bias)
            return self.fc2(F.dropout(h * torch.sigmoid(1.702 * h), self.dropout, training=True))
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

    def forward(self, x, causal: bool = False, taps: bool = False):
        # x: [N, L, D] -> [N, L, D]; with taps also the projected q and k per head, [N, L, H, dh]
        # (bias added, not yet scaled: what EVL's decoder reads, docs/model-evl.md §3)
        q, k, v = self.ops.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, dim=-1)
        h = self.heads
        o = merge_heads(self.ops.attention(split_heads(q, h), split_heads(k, h), split_heads(v, h), causal=causal))
        o = self.ops.linear(o, self.out.weight, self.out.bias)
        if not taps:
            return o
        n, seq, d = q.shape
        return o, q.view(n, seq, h, d // h), k.view(n, seq, h, d // h)


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

    def forward_taps(self, x):
        """(output, q, k): the block's output and its attention's q and k per head (EVL's taps)."""
        a, q, k = self.attn(self.ln_1(x), taps=True)
        x, h = self.ln_2.add_forward(x, a)
        return x + self.mlp(h), q, k


class ImageEmbedding(nn.Module):
    """CLIP's image embedding: patches by conv1 (no bias), class token first, positional
    embedding, ln_pre. X-CLIP's vision tower and EVL's backbone both start with it."""

    def __init__(self, width: int, patch_size: int, num_patches: int, eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(num_patches + 1, width))
        self.ln_pre = LayerNorm(width, eps=eps)

    def embed(self, frames):
        # frames: [BT, 3, S, S] -> tokens [BT, 1 + N, D]
        x = self.conv1(frames).flatten(2).transpose(1, 2)                     # [BT, N, D]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)


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
