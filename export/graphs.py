"""The exported graphs of a model, built from the one model definition with export-friendly ops.

X-CLIP, two graphs:
Text graph:  input_ids [K, L] (L <= 77, CLIP ids)          -> text_features [K, E]
Video graph: pixel_values [B, T, 3, S, S], text_features [K, E] -> logits [B, K], video_embeds [B, E]

Two graphs because text features do not depend on the video (docs/model-xclip.md §7): a label set
is encoded once and its features fed to every video batch.

EVL (docs/model-evl.md), one graph, closed set (no text tower):
Video graph: pixel_values [B, T, 3, S, S] -> logits [B, classes], video_embeds [B, C] (the decoder
query's features before the head, EVL.encode_video)

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

from xclip_engine.engine.model import EVL, XCLIP
from xclip_engine.engine.model.ops import ReferenceOps, relative_position_index

TEXT_INPUTS = ("input_ids",)
TEXT_OUTPUTS = ("text_features",)
VIDEO_INPUTS = ("pixel_values", "text_features")
VIDEO_OUTPUTS = ("logits", "video_embeds")
EVL_VIDEO_INPUTS = ("pixel_values",)
EVL_VIDEO_OUTPUTS = ("logits", "video_embeds")

# The graphs of each model family: role -> (input names, output names), in the order they run.
FAMILY_GRAPHS = {
    "xclip": {"text": (TEXT_INPUTS, TEXT_OUTPUTS), "video": (VIDEO_INPUTS, VIDEO_OUTPUTS)},
    "evl": {"video": (EVL_VIDEO_INPUTS, EVL_VIDEO_OUTPUTS)},
}


def family_of(config) -> str:
    """"xclip" or "evl": which model definition `config` (or None, an X-CLIP manifest) describes."""
    return getattr(config, "family", None) or "xclip"


def roles_of(family: str) -> tuple[str, ...]:
    """The graph roles an export of `family` has: ("text", "video") for X-CLIP, ("video",) for EVL."""
    try:
        return tuple(FAMILY_GRAPHS[family])
    except KeyError:
        raise ValueError(f"model family {family!r} is not one of {', '.join(FAMILY_GRAPHS)}") from None


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

    @staticmethod
    def adjacent_frame_feature(q, k, w_prev, w_next, grid: int):
        # EVL's adjacent-frame feature (docs/model-evl.md §7) as the reference computes it, written
        # without in-place writes: the reference scatters each attention row into its (2g-1)²
        # relative offsets (ScatterElements) and adds into slices of a zero tensor (ScatterND per
        # slice). Here the offsets are *gathered*: for query patch p, offset o reads A[p, p'] for the
        # one key patch p' at that offset, or a zero column appended to A when the offset leaves
        # the grid (GatherElements, with a constant [P, (2g-1)²] index), and the zero rows (class
        # token, missing neighbours) are Pad/Concat. Same values in the same sums: bitwise equal.
        b, t, seq, h, dh = q.shape
        if seq != grid * grid + 1:
            raise ValueError(f"adjacent_frame_feature: {seq} tokens per frame, expected 1 + {grid}² (class token "
                             "and the patch grid)")
        qp = q[:, :, 1:].permute(0, 1, 3, 2, 4) * dh ** -0.5                       # [B, T, H, P, dh]
        kp = k[:, :, 1:].permute(0, 1, 3, 2, 4)
        gather = offset_gather_index(grid, q.device)                               # [P, (2g-1)²]
        c = w_prev.shape[-1]

        def feature(qf, kf, w):
            # qf, kf [B, T-1, H, P, dh] -> [B, T-1, P, C]
            a = torch.softmax(qf @ kf.transpose(-1, -2), dim=-1).mean(dim=2)       # [B, T-1, P, P]
            a = F.pad(a, (0, 1))                                                    # column P: zero
            rel = torch.gather(a, -1, gather.expand(*a.shape[:-1], gather.shape[-1]))
            return rel @ w.to(a.dtype)                                              # [B, T-1, P, C]

        if t == 1:
            return q.new_zeros(b, t, seq, c)
        prev = F.pad(feature(qp[:, 1:], kp[:, :-1], w_prev), (0, 0, 0, 0, 1, 0))   # frames 1..T-1
        nxt = F.pad(feature(qp[:, :-1], kp[:, 1:], w_next), (0, 0, 0, 0, 0, 1))    # frames 0..T-2
        return F.pad(prev + nxt, (0, 0, 1, 0))                                      # class-token row: 0


def offset_gather_index(grid: int, device=None) -> torch.Tensor:
    """[P, (2g-1)²] long: for query patch p and relative offset o, the key patch p' with
    relative_position_index(p, p') == o, or P (a zero column) where that p' is off the grid.
    The inverse, row by row, of the scatter in ReferenceOps.adjacent_frame_feature."""
    idx = relative_position_index(grid, device)                                     # [P, P]
    p = idx.shape[0]
    out = torch.full((p, (2 * grid - 1) ** 2), p, dtype=torch.long, device=device)
    out.scatter_(-1, idx, torch.arange(p, device=device).expand(p, p).contiguous())
    return out


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


class EVLVideoGraph(nn.Module):
    """pixel_values -> (logits, video features): EVL's forward, both outputs."""

    def __init__(self, model: EVL):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        features = self.model.encode_video(pixel_values)
        return self.model.logits_from_features(features), features


def export_view(model: XCLIP) -> tuple[TextGraph, VideoGraph]:
    """Both graph modules over an X-CLIP `model`, switched to the export ops (switch back with use_ops)."""
    model.eval().use_ops(EXPORT_OPS)
    return TextGraph(model).eval(), VideoGraph(model).eval()


def graph_modules(model) -> dict[str, nn.Module]:
    """role -> graph module over `model` (either family), switched to the export ops (switch back
    with use_ops)."""
    if family_of(model.config) == "evl":
        model.eval().use_ops(EXPORT_OPS)
        return {"video": EVLVideoGraph(model).eval()}
    return dict(zip(("text", "video"), export_view(model)))
