"""The two video-specific heads of X-CLIP on top of the CLIP towers.

MIT (multi-frame integration transformer): VideoX X-CLIP/models/mit.py.
Video-specific prompt generator: VideoX X-CLIP/models/prompt.py (VideoSpecificPrompt).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import XCLIPConfig
from .layers import MLP, LayerNorm, ResidualBlock, merge_heads, split_heads
from .ops import REFERENCE


class MultiFrameIntegration(nn.Module):
    def __init__(self, cfg: XCLIPConfig):
        super().__init__()
        e = cfg.embed_dim
        self.positional_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, e))
        self.blocks = nn.ModuleList([ResidualBlock(e, cfg.mit_heads, cfg.layer_norm_eps)
                                     for _ in range(cfg.mit_layers)])

    def forward(self, frames):
        # frames: [B, T, E] per-frame class features -> video embedding [B, E]
        x = frames + self.positional_embedding
        for block in self.blocks:
            x = block(x)
        return (x + frames).mean(dim=1)              # the MIT input is added back before the mean


class CrossAttention(nn.Module):
    """Label queries over a video's visual tokens; q/k/v without bias, output projection with."""

    ops = REFERENCE

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)   # rows: k then v
        self.proj = nn.Linear(width, width)

    def forward(self, x, visual):
        # x: [B, K, E] label features; visual: [B, N, E] -> [B, K, E]
        h = self.heads
        k, v = self.ops.linear(visual, self.kv.weight).chunk(2, dim=-1)
        q = self.ops.linear(x, self.q.weight)
        o = self.ops.prompt_attention(split_heads(q, h), split_heads(k, h), split_heads(v, h))
        return self.ops.linear(merge_heads(o), self.proj.weight, self.proj.bias)


class PromptLayer(nn.Module):
    def __init__(self, width: int, heads: int, eps: float):
        super().__init__()
        self.norm1 = LayerNorm(width, eps=eps)
        self.cross_attn = CrossAttention(width, heads)
        self.norm3 = LayerNorm(width, eps=eps)
        self.mlp = MLP(width, 4 * width)

    def forward(self, x, visual):
        x = x + self.cross_attn(self.norm1(x), visual)
        return x + self.mlp(self.norm3(x))


class PromptGenerator(nn.Module):
    def __init__(self, cfg: XCLIPConfig):
        super().__init__()
        e = cfg.embed_dim
        self.norm = LayerNorm(e, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList([PromptLayer(e, cfg.prompt_heads, cfg.layer_norm_eps)
                                     for _ in range(cfg.prompt_layers)])
        self.alpha = nn.Parameter(torch.full((e,), cfg.prompt_alpha))

    def forward(self, text, visual):
        # text: [B, K, E]; visual: [B, N, E] -> prompt [B, K, E], added to the text features
        visual = self.norm(visual)
        for layer in self.layers:
            text = layer(text, visual)
        return self.alpha * text
