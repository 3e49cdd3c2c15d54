"""X-CLIP's vision tower: the Cross-frame Communication Transformer (CCT).

Source of the math: microsoft/VideoX X-CLIP/models/cct.py (CrossFramelAttentionBlock,
CrossFrameCommunicationTransformer); docs/model-xclip.md §3-§4 states it step by step.
Layout here is batch-first: x is [B*T, L, D], the T frames of one video contiguous.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import XCLIPConfig
from .layers import MLP, ImageEmbedding, LayerNorm, SelfAttention, merge_heads, split_heads
from .ops import REFERENCE


class CrossFrameBlock(nn.Module):
    ops = REFERENCE

    def __init__(self, width: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.message_fc = nn.Linear(width, width)
        self.message_ln = LayerNorm(width, eps=eps)
        self.message_attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = MLP(width, 4 * width)

    def messages(self, x, num_frames: int):
        """Steps 1-2: one message token per frame, then attention across the T frames of a video."""
        bt, _, d = x.shape
        # a module call, not ops.linear: 0.1% of the FLOPs, and its own name in an exported graph lets
        # int8 export keep it float (export/quantize.py)
        msg = self.message_fc(x[:, 0]).view(bt // num_frames, num_frames, d)  # [B, T, D]
        ln, attn = self.message_ln, self.message_attn                          # msg + attn(ln(msg))
        msg = self.ops.message_attention(msg, ln.weight, ln.bias, ln.eps, attn.qkv.weight, attn.qkv.bias,
                                         attn.out.weight, attn.out.bias, attn.heads)
        return msg.reshape(bt, 1, d)                                          # [BT, 1, D]

    def frame_attention(self, x, msg):
        """Steps 3-4: attention over each frame's L tokens plus its message token (appended last).

        ln_1 is per token, so normalising x and msg apart equals normalising their concatenation;
        the message token's output is dropped afterwards, so it gets a key and value but no query.
        """
        bt, seq, d = x.shape
        h = self.heads
        qkv, out = self.attn.qkv, self.attn.out
        q, k, v = self.ops.linear(self.ln_1(x), qkv.weight, qkv.bias).chunk(3, dim=-1)     # [BT, L, D] each
        w_kv, b_kv = qkv.weight[d:], qkv.bias[d:]
        k_msg, v_msg = self.ops.linear(self.ln_1(msg), w_kv, b_kv).chunk(2, dim=-1)        # [BT, 1, D] each
        o = self.ops.frame_attention(split_heads(q, h), split_heads(k, h), split_heads(v, h),
                                     split_heads(k_msg, h), split_heads(v_msg, h))  # [BT, H, L, dh]
        return self.ops.linear(merge_heads(o), out.weight, out.bias)

    def forward(self, x, num_frames: int):
        msg = self.messages(x, num_frames)
        x, h = self.ln_2.add_forward(x, self.frame_attention(x, msg))         # x + attn, then ln_2
        return x + self.mlp(h)                                                # step 5


class VisionTower(ImageEmbedding):
    def __init__(self, cfg: XCLIPConfig):
        d = cfg.vision_width
        super().__init__(d, cfg.patch_size, cfg.num_patches, cfg.layer_norm_eps)
        self.blocks = nn.ModuleList(
            [CrossFrameBlock(d, cfg.vision_heads, cfg.layer_norm_eps) for _ in range(cfg.vision_layers)])
        self.ln_post = LayerNorm(d, eps=cfg.layer_norm_eps)
        self.proj = nn.Parameter(torch.zeros(d, cfg.embed_dim))
        self.gradient_checkpointing = False

    def forward(self, frames, num_frames: int):
        """frames [BT, 3, S, S] -> (class features [BT, E] after ln_post @ proj, patch tokens [BT, N, D])."""
        x = self.embed(frames)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, num_frames, use_reentrant=False)
            else:
                x = block(x, num_frames)
        cls = self.ln_post(x[:, 0]) @ self.proj
        return cls, x[:, 1:]
