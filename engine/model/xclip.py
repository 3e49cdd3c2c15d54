"""The reference X-CLIP model: docs/model-xclip.md, one readable definition for every backend.

Source: microsoft/VideoX X-CLIP/models/xclip.py (XCLIP.encode_video, forward) and
transformers' XCLIPModel (logits_per_video). Text features do not depend on the video, so they
are an input of `logits`, computed once per label set by `encode_text`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import XCLIPConfig
from .layers import LayerNorm, RoutedModel, init_linear
from .ops import REFERENCE
from .text import TextTower
from .video_heads import MultiFrameIntegration, PromptGenerator
from .vision import VisionTower


class XCLIP(RoutedModel):
    def __init__(self, config: XCLIPConfig, ops=REFERENCE):
        super().__init__()
        self.config = config
        self.visual = VisionTower(config)
        self.prompts_visual_ln = LayerNorm(config.vision_width, eps=config.layer_norm_eps)
        self.prompts_visual_proj = nn.Parameter(torch.zeros(config.vision_width, config.embed_dim))
        self.mit = MultiFrameIntegration(config)
        self.text = TextTower(config)
        self.prompts_generator = PromptGenerator(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.reset_parameters()
        self.use_ops(ops)

    @torch.no_grad()
    def reset_parameters(self):
        """CLIP-style random init (used by tests and by training from scratch)."""
        cfg = self.config
        init_linear(self, std=0.02)
        v, t = self.visual, self.text
        nn.init.normal_(v.conv1.weight, std=cfg.vision_width**-0.5)
        for p in (v.class_embedding, v.positional_embedding, v.proj, self.prompts_visual_proj):
            nn.init.normal_(p, std=cfg.vision_width**-0.5)
        nn.init.normal_(t.token_embedding.weight, std=0.02)
        nn.init.normal_(t.positional_embedding, std=0.01)
        nn.init.normal_(t.text_projection, std=cfg.text_width**-0.5)
        nn.init.normal_(self.mit.positional_embedding, std=0.02)
        self.prompts_generator.alpha.fill_(cfg.prompt_alpha)
        self.logit_scale.fill_(math.log(1 / 0.07))

    # ---- towers -----------------------------------------------------------------------------
    def encode_text(self, ids):
        """ids [K, C] CLIP token ids -> text features [K, E] (transformers' get_text_features)."""
        return self.text(ids)

    def video_features(self, pixel_values):
        """pixel_values [B, T, 3, S, S] -> (video embedding [B, E], visual tokens [B, N, E]).

        The video embedding is transformers' get_video_features; the visual tokens (patch tokens
        through prompts_visual_ln and prompts_visual_proj, averaged over T) feed the prompts.
        """
        b, t, c, s, _ = pixel_values.shape
        if t != self.config.num_frames:
            raise ValueError(f"this model takes {self.config.num_frames} frames per video, got {t}")
        cls, patches = self.visual(pixel_values.reshape(b * t, c, s, s), t)  # [BT, E], [BT, N, D]
        video = self.mit(cls.view(b, t, -1))                                  # [B, E]
        # ln is per token and the projection is linear, so averaging over T before projecting
        # equals the official project-then-average, at 1/T of the matmul.
        tokens = self.prompts_visual_ln(patches).view(b, t, patches.shape[1], -1).mean(dim=1)
        return video, tokens @ self.prompts_visual_proj                       # [B, E], [B, N, E]

    def encode_video(self, pixel_values):
        return self.video_features(pixel_values)[0]

    # ---- video-text scores ------------------------------------------------------------------
    def logits_from_features(self, video, tokens, text):
        """video [B, E], tokens [B, N, E], text [K, E] -> logits [B, K] (logits_per_video)."""
        text = text.unsqueeze(0).expand(video.shape[0], -1, -1)                # [B, K, E]
        text = text + self.prompts_generator(text, tokens)                     # video-specific prompts
        video = F.normalize(video, dim=-1)
        text = F.normalize(text, dim=-1)
        return self.logit_scale.exp() * torch.einsum("be,bke->bk", video, text)

    def forward(self, pixel_values, text_features):
        video, tokens = self.video_features(pixel_values)
        return self.logits_from_features(video, tokens, text_features)
