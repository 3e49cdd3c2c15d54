"""CLIP's text tower: causal transformer, features of the EOT token, projection.

Source: OpenAI CLIP model.py `encode_text` as X-CLIP uses it (VideoX X-CLIP/models/xclip.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import XCLIPConfig
from .layers import LayerNorm, ResidualBlock, causal_eot_trim


class TextTower(nn.Module):
    def __init__(self, cfg: XCLIPConfig):
        super().__init__()
        w = cfg.text_width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, w))
        self.blocks = nn.ModuleList([ResidualBlock(w, cfg.text_heads, cfg.layer_norm_eps)
                                     for _ in range(cfg.text_layers)])
        self.ln_final = LayerNorm(w, eps=cfg.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.zeros(w, cfg.embed_dim))

    def forward(self, ids, trim: bool = True):
        # ids: [K, C] int64, <|startoftext|> ... <|endoftext|> then padding -> [K, E]
        eot = ids.argmax(dim=-1)                      # EOT has the largest id (49407) in each row
        if trim:   # padding after the last EOT cannot matter; off where a traced graph needs static code
            ids = ids[:, : causal_eot_trim(ids)]
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, causal=True)
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])  # [K, W]
        return x @ self.text_projection
