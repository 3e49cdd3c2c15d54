"""The two exported graphs of X-CLIP, built from the one model definition with export-friendly ops.

Text graph:  input_ids [K, L] (L <= 77, CLIP ids)          -> text_features [K, E]
Video graph: pixel_values [B, T, 3, S, S], text_features [K, E] -> logits [B, K], video_embeds [B, E]

Two graphs because text features do not depend on the video (docs/model-xclip.md §7): a label set
is encoded once and its features fed to every video batch.

`ExportOps` has the interface of engine/model/ops.py ReferenceOps but writes attention as the
plain eager pattern (MatMul, scale, Softmax, MatMul): ONNX Runtime's transformer optimizer
recognises attention only in that form (docs/machines.md §6), and TensorRT parses it as is.
Even so its CLIP attention fusion does not match these graphs: it wants separate q, k, v
projections of one input, while the model projects q, k, v with one Linear (a Split follows) and
the frame attention's keys carry the message token (a Concat). LayerNormalization, QuickGelu and
(for GPU providers) SkipLayerNormalization do fuse (ort_runner.py); attention is a few per cent of
X-CLIP's FLOPs at 50 tokens.
Scaled dot-product attention: Vaswani et al. 2017, eq. 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xclip_engine.engine.model import XCLIP
from xclip_engine.engine.model.ops import ReferenceOps

TEXT_INPUTS = ("input_ids",)
TEXT_OUTPUTS = ("text_features",)
VIDEO_INPUTS = ("pixel_values", "text_features")
VIDEO_OUTPUTS = ("logits", "video_embeds")


def _plain_attention(q, k, v, mask=None):
    # q: [N, H, Lq, dh], k/v: [N, H, Lk, dh] -> [N, H, Lq, dh]
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


class ExportOps(ReferenceOps):
    """ReferenceOps' arithmetic with every attention in the operator pattern that ONNX tools fuse.

    A subclass, so an op added to the reference later is exported as the reference computes it;
    only the attention-shaped ops are rewritten here (SDPA exports as one opaque pattern).
    message_attention is inherited: the reference composes it from self.layer_norm and
    self.attention, so its attention is the plain pattern below too.
    """

    name = "export"

    @staticmethod
    def attention(q, k, v, causal: bool = False):
        mask = None
        if causal:
            # a comparison of two ranges, not triu: Less/Where parse everywhere (TensorRT included)
            lq, lk = q.shape[2], k.shape[2]
            mask = torch.arange(lk, device=q.device)[None, :] > torch.arange(lq, device=q.device)[:, None]
        return _plain_attention(q, k, v, mask)

    @staticmethod
    def frame_attention(q, k, v, k_msg, v_msg):
        # each frame's tokens attend to themselves and to the frame's message token (appended last)
        return _plain_attention(q, torch.cat([k, k_msg], dim=2), torch.cat([v, v_msg], dim=2))

    @staticmethod
    def prompt_attention(q, k, v):
        return _plain_attention(q, k, v)

    @staticmethod
    def mlp(x, w1, b1, w2, b2):
        # the same MLP on the tokens flattened to 2-D: Linear then exports as one Gemm with its bias
        # (a 3-D Linear is MatMul + Add), and ONNX Runtime still fuses x*sigmoid(1.702x) to QuickGelu
        shape = x.shape
        h = F.linear(x.reshape(-1, shape[-1]), w1, b1)
        return F.linear(h * torch.sigmoid(1.702 * h), w2, b2).reshape(shape)


EXPORT_OPS = ExportOps()


class TextGraph(nn.Module):
    """The text tower without its data-dependent trim.

    TextTower.forward cuts the ids after the last EOT with a Python int computed from the data
    (`causal_eot_trim`), which torch.export cannot trace. Under the causal mask the tokens after a
    row's EOT cannot change its features, so the graph takes [K, L] for any L <= 77 and the
    runners do the trim before calling it: the same arithmetic, and the same saving.
    """

    def __init__(self, model: XCLIP):
        super().__init__()
        self.text = model.text

    def forward(self, input_ids):
        return self.text(input_ids, trim=False)                                   # [K, L] -> [K, E]


class VideoGraph(nn.Module):
    """pixel_values and text features -> (logits, video embeddings): XCLIP's forward, both outputs."""

    def __init__(self, model: XCLIP):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, text_features):
        video, tokens = self.model.video_features(pixel_values)
        return self.model.logits_from_features(video, tokens, text_features), video


def export_view(model: XCLIP) -> tuple[TextGraph, VideoGraph]:
    """Both graph modules over `model`, switched to the export ops (switch back with use_ops)."""
    model.eval().use_ops(EXPORT_OPS)
    return TextGraph(model).eval(), VideoGraph(model).eval()
