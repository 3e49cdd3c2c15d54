"""The reference EVL model: docs/model-evl.md, one readable definition for every backend.

A frozen CLIP ViT (the same ImageEmbedding and ResidualBlock as X-CLIP's towers) runs per frame;
its last K blocks hand their outputs and their attention's q and k to a light decoder: one learned
query attends over all frames' tokens after temporal modules (depthwise temporal conv, temporal
position embedding, the adjacent-frame attention feature) have been added. A linear head on the
query gives the class logits. Closed set: there is no text tower.

Source of the math: OpenGVLab/efficient-video-recognition model.py and vision_transformer.py, read
for facts and restated in docs/model-evl.md §3-§9 (no code taken: the repository states no license).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import EVLConfig
from .layers import MLP, ImageEmbedding, LayerNorm, ResidualBlock, RoutedModel, merge_heads, split_heads
from .ops import REFERENCE


class Backbone(ImageEmbedding):
    """CLIP's image transformer without ln_post and proj; returns the taps of its last blocks."""

    def __init__(self, cfg: EVLConfig):
        super().__init__(cfg.width, cfg.patch_size, cfg.num_patches, cfg.layer_norm_eps)
        self.blocks = nn.ModuleList([ResidualBlock(cfg.width, cfg.heads, cfg.layer_norm_eps)
                                     for _ in range(cfg.layers)])

    def forward(self, frames, taps: int):
        """frames [BT, 3, S, S] -> [(out [BT, L, C], q, k [BT, L, H, dh])] of the last `taps` blocks."""
        x = self.embed(frames)
        first_tap = len(self.blocks) - taps
        out = []
        for i, block in enumerate(self.blocks):
            if i < first_tap:
                x = block(x)
            else:
                x, q, k = block.forward_taps(x)
                out.append((x, q, k))
        return out


class DecoderAttention(nn.Module):
    """The query's attention over frame tokens: separate q, k, v, out projections, all with bias."""

    ops = REFERENCE

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x, kv):
        # x [B, 1, C] query, kv [B, N, C] frame tokens -> [B, 1, C]
        h = self.heads
        o = self.ops.attention(split_heads(self.q_proj(x), h), split_heads(self.k_proj(kv), h),
                               split_heads(self.v_proj(kv), h))
        return self.out_proj(merge_heads(o))


class DecoderLayer(nn.Module):
    """§8: x + attn(norm1(x), norm3(Y)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: EVLConfig):
        super().__init__()
        c, eps = cfg.width, cfg.layer_norm_eps
        self.norm1 = LayerNorm(c, eps=eps)
        self.attn = DecoderAttention(c, cfg.decoder_heads)
        self.norm2 = LayerNorm(c, eps=eps)
        self.mlp = MLP(c, round(cfg.decoder_mlp_ratio * c), dropout=cfg.decoder_dropout)
        self.norm3 = LayerNorm(c, eps=eps)

    def forward(self, x, tokens):
        x = x + self.attn(self.norm1(x), self.norm3(tokens))
        return x + self.mlp(self.norm2(x))


class TemporalModules(nn.Module):
    """§5-§7 for one decoder layer: temporal conv, temporal position embedding, adjacent-frame feature."""

    ops = REFERENCE

    def __init__(self, cfg: EVLConfig):
        super().__init__()
        c, g = cfg.width, cfg.grid
        self.grid = g
        self.conv = nn.Conv1d(c, c, kernel_size=3, padding=1, groups=c)   # depthwise, along T
        self.pos = nn.Parameter(torch.zeros(cfg.num_frames, c))
        self.w_prev = nn.Parameter(torch.zeros((2 * g - 1) ** 2, c))         # official name: w1
        self.w_next = nn.Parameter(torch.zeros((2 * g - 1) ** 2, c))         # official name: w2

    def forward(self, x, q, k):
        # x [B, T, L, C], q/k [B, T, L, H, dh] -> x + every term, each computed from the given x
        b, t, seq, c = x.shape
        conv = self.conv(x.permute(0, 2, 3, 1).reshape(b * seq, c, t))                 # [B*L, C, T]
        conv = conv.view(b, seq, c, t).permute(0, 3, 1, 2)                             # [B, T, L, C]
        feat = self.ops.adjacent_frame_feature(q, k, self.w_prev, self.w_next, self.grid)
        return x + conv + self.pos.to(x.dtype)[None, :, None, :] + feat


class EVL(RoutedModel):
    def __init__(self, config: EVLConfig, ops=REFERENCE):
        super().__init__()
        self.config = config
        c = config.width
        self.backbone = Backbone(config)
        self.cls_token = nn.Parameter(torch.zeros(c))
        self.temporal = nn.ModuleList([TemporalModules(config) for _ in range(config.decoder_layers)])
        self.decoder = nn.ModuleList([DecoderLayer(config) for _ in range(config.decoder_layers)])
        self.head_norm = LayerNorm(c, eps=config.layer_norm_eps)
        self.head_dropout = nn.Dropout(config.decoder_dropout)
        self.head = nn.Linear(c, config.num_classes)
        # EVL's backbone is frozen: it runs without autograd and its weights get no gradients
        # (train/ trains the decoder and head only). Set False to fine-tune it as well.
        self.freeze_backbone = True
        self.reset_parameters()
        self.use_ops(ops)

    @torch.no_grad()
    def reset_parameters(self):
        """CLIP-style random init for the backbone; the temporal terms start at zero (tests and
        training from scratch; a real backbone comes from a CLIP checkpoint)."""
        from .layers import init_linear

        cfg = self.config
        init_linear(self, std=0.02)
        e = self.backbone
        nn.init.normal_(e.conv1.weight, std=cfg.width ** -0.5)
        nn.init.normal_(e.class_embedding, std=cfg.width ** -0.5)
        nn.init.normal_(e.positional_embedding, std=cfg.width ** -0.5)
        for m in self.temporal:
            nn.init.zeros_(m.conv.weight)
            nn.init.zeros_(m.conv.bias)

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        """Everything trained when the backbone is frozen: decoder, temporal modules and head."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    # ---- the video path ----------------------------------------------------------------------
    def encode_video(self, pixel_values):
        """pixel_values [B, T, 3, S, S] -> the query token's features [B, C], before the head."""
        b, t, ch, s, _ = pixel_values.shape
        cfg = self.config
        if t != cfg.num_frames:
            raise ValueError(f"this model takes {cfg.num_frames} frames per video, got {t}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            taps = self.backbone(pixel_values.reshape(b * t, ch, s, s), cfg.decoder_layers)
        x = self.cls_token.to(taps[0][0].dtype).expand(b, 1, -1)
        for (out, q, k), temporal, layer in zip(taps, self.temporal, self.decoder):
            seq, c = out.shape[1:]
            y = temporal(out.view(b, t, seq, c), q.view(b, t, *q.shape[1:]), k.view(b, t, *k.shape[1:]))
            x = layer(x, y.reshape(b, t * seq, c))
        return x[:, 0]

    def logits_from_features(self, features):
        """[B, C] query features -> raw class logits [B, classes] (§9)."""
        return self.head(self.head_dropout(self.head_norm(features)))

    def forward(self, pixel_values):
        return self.logits_from_features(self.encode_video(pixel_values))
