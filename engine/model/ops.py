"""The ops layer: the few primitives the X-CLIP model calls, one implementation per backend.

The model (xclip.py and its parts) is written once; a backend changes what these functions
do (reference PyTorch here, fused Triton kernels in xclip_engine.kernels), never the model.
Tensors are batch-first: attention inputs are [N, H, L, dh].

Every op takes tensors only, weights and biases included (the modules pass their parameters), so
a backend never reaches into a module, and every op here is directly callable on float64 copies
of its inputs: the kernel tests and the self-check (kernels/selfcheck.py) use this class as the
one reference, run in float64 as the exact answer and in the input dtype as the yardstick.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ReferenceOps:
    """Plain PyTorch: the definition every other backend is tested against."""

    name = "reference"

    @staticmethod
    def linear(x, weight, bias=None):
        # every projection of the modules that route through ops (attention, MLP, messages, prompts)
        return F.linear(x, weight, bias)

    @staticmethod
    def attention(q, k, v, causal: bool = False):
        # q: [N, H, Lq, dh], k/v: [N, H, Lk, dh] -> [N, H, Lq, dh]
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    @staticmethod
    def frame_attention(q, k, v, k_msg, v_msg):
        # Intra-frame attention of X-CLIP's CCT block: each frame's L tokens attend to themselves
        # and to the frame's message token, appended at the end of the sequence.
        # q/k/v: [BT, H, L, dh]; k_msg/v_msg: [BT, H, 1, dh] -> [BT, H, L, dh]
        # The message token's own output is dropped by the block, so no query is needed for it.
        k = torch.cat([k, k_msg], dim=2)
        v = torch.cat([v, v_msg], dim=2)
        return F.scaled_dot_product_attention(q, k, v)

    def message_attention(self, msg, ln_w, ln_b, eps: float, qkv_w, qkv_b, out_w, out_b, heads: int):
        # Cross-frame attention of the CCT block: msg [B, T, D] (message_fc output) ->
        # msg + out(attention over T (qkv(layer_norm(msg)))), per video, `heads` heads.
        # qkv_w [3D, D] holds the q, k, v rows in that order. A method, not a staticmethod: the
        # norm and the attention go through this object's own layer_norm and attention, so a
        # subclass that rewrites attention (export/graphs.py ExportOps) rewrites this one too.
        b, t, d = msg.shape
        q, k, v = self.linear(self.layer_norm(msg, ln_w, ln_b, eps), qkv_w, qkv_b).chunk(3, dim=-1)
        q, k, v = (x.view(b, t, heads, d // heads).transpose(1, 2) for x in (q, k, v))    # [B, H, T, dh]
        o = self.attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        return msg + self.linear(o, out_w, out_b)

    @staticmethod
    def prompt_attention(q, k, v):
        # Prompt generator cross-attention: q [B, H, K, dh] label queries, k/v [B, H, N, dh]
        # visual tokens -> [B, H, K, dh].
        return F.scaled_dot_product_attention(q, k, v)

    @staticmethod
    def layer_norm(x, weight, bias, eps: float):
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)

    @staticmethod
    def add_layer_norm(x, delta, weight, bias, eps: float):
        # The residual add and the layer norm after it: -> (x + delta, layer_norm(x + delta)).
        s = x + delta
        return s, F.layer_norm(s, s.shape[-1:], weight, bias, eps)

    def mlp(self, x, w1, b1, w2, b2):
        # CLIP's MLP: Linear(D, 4D) (w1 [4D, D], b1 [4D]), QuickGELU x*sigmoid(1.702x), Linear(4D, D).
        h = self.linear(x, w1, b1)
        if h.requires_grad:   # training: autograd needs h and sigmoid(1.702h) kept apart
            return self.linear(h * torch.sigmoid(1.702 * h), w2, b2)
        # Inference: the same three elementwise ops in the same order (bitwise equal), written into
        # one temporary and h itself instead of three fresh [B*T*L, 4D] tensors of tens of MB each,
        # whose allocation and first touch cost more than the arithmetic. A B/32 batch-8 forward
        # took 17% less time in fp32 and 8% less in bf16 (best of 3, fresh processes).
        return self.linear(h.mul_(torch.mul(h, 1.702).sigmoid_()), w2, b2)


    @staticmethod
    def adjacent_frame_feature(q, k, w_prev, w_next, grid: int):
        # EVL's temporal cross attention (docs/model-evl.md §7): how each frame's patches attend to
        # the previous and the next frame's patches, turned into a feature through relative-position
        # tables. q, k [B, T, L, H, dh] (L = 1 + grid², class token first; projected with bias,
        # not yet scaled); w_prev, w_next [(2*grid-1)², C] -> [B, T, L, C], zero on the class-token
        # row and for the missing neighbour at either end.
        #
        # For a query patch p each key patch p' has its own relative offset, so summing
        # A[p, p'] * W[idx(p, p')] over p' equals scattering A[p, :] into the (2g-1)² offsets and
        # multiplying by W: [P, (2g-1)²] @ [(2g-1)², C]. Exact, and it never forms the
        # [P, P, C] gather (118 MB per table at B/16).
        b, t, seq, h, dh = q.shape
        if seq != grid * grid + 1:
            raise ValueError(f"adjacent_frame_feature: {seq} tokens per frame, expected 1 + {grid}² (class token "
                             "and the patch grid)")
        qp = q[:, :, 1:].permute(0, 1, 3, 2, 4) * dh ** -0.5                       # [B, T, H, P, dh]
        kp = k[:, :, 1:].permute(0, 1, 3, 2, 4)
        idx = relative_position_index(grid, q.device)                              # [P, P]
        out = q.new_zeros(b, t, seq, w_prev.shape[-1])

        def feature(qf, kf, w):
            # qf, kf [B, T-1, H, P, dh] -> [B, T-1, P, C]
            a = torch.softmax(qf @ kf.transpose(-1, -2), dim=-1).mean(dim=2)       # [B, T-1, P, P]
            rel = a.new_zeros(*a.shape[:-1], w.shape[0])
            rel.scatter_(-1, idx.expand_as(a), a)                                  # [B, T-1, P, (2g-1)²]
            return rel @ w.to(a.dtype)

        if t > 1:
            out[:, 1:, 1:] += feature(qp[:, 1:], kp[:, :-1], w_prev)    # frame t attends to t-1
            out[:, :-1, 1:] += feature(qp[:, :-1], kp[:, 1:], w_next)   # frame t attends to t+1
        return out


def relative_position_index(grid: int, device=None) -> torch.Tensor:
    """[P, P] long: the row of a relative-position table for (query patch p, key patch p') on a
    grid x grid patch grid, p = (r, c) row-major: (r - r' + g - 1) * (2g - 1) + (c - c' + g - 1)."""
    r, c = torch.meshgrid(torch.arange(grid, device=device), torch.arange(grid, device=device), indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)
    dr = r[:, None] - r[None, :] + grid - 1
    dc = c[:, None] - c[None, :] + grid - 1
    return dr * (2 * grid - 1) + dc


REFERENCE = ReferenceOps()


class OneDnnOps(ReferenceOps):
    """The reference arithmetic with its fp32 projections on oneDNN's GEMM (backend "onednn").

    torch's CPU F.linear in fp32 calls MKL's sgemm, and MKL picks its code path by CPU vendor: on
    AMD EPYCs it runs the AVX2 kernels, at about half the rate of the AVX-512 GEMMs that oneDNN
    (torch.ops.mkldnn) and ONNX Runtime's MLAS run there (docs/machines.md §7). Same fp32 products
    and sums, another summation order: within the fp32 yardstick of the reference. Whether it is
    faster is measured, not assumed (backend "auto" times both); bf16, float64 and autograd calls
    keep F.linear (oneDNN runs bf16 under F.linear already).
    """

    name = "onednn"

    @staticmethod
    def linear(x, weight, bias=None):
        if (x.dtype is torch.float32 and weight.dtype is torch.float32 and x.device.type == "cpu"
                and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return F.linear(x, weight, bias)


ONEDNN = OneDnnOps()


def onednn_available() -> tuple[bool, str]:
    """Whether this torch has oneDNN's fp32 linear (the CPU builds on x86 and ARM do)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False, "this torch build has no oneDNN (mkldnn) linear"
    return True, ""
