"""The bf16 path of the reference backend: the same XCLIP module with its heavy towers cast to bf16.

    net = to_bf16(net)          # what xe.load(src, precision="bf16") does; in place, returns net

On CPUs with AMX (Intel Sapphire Rapids and later) oneDNN runs bf16 matmuls 3-4x faster than fp32
(docs/machines.md §7: 790-940 against 230-310 GFLOP/s on our two cores), and the video tower is
almost all matmul. Not a second model: the weights are cast and four dtype boundaries are hooked
onto the existing modules, so the arithmetic is still the reference ops layer's.

What runs in bf16 and what stays fp32, and why:
- bf16: the vision tower (conv, attention, MLPs: 97% of the FLOPs of a video), the projection of
  the visual tokens and the prompt generator (it runs per (video, label) pair, so it grows with K).
- fp32: every LayerNorm's statistics (PyTorch's CPU kernel accumulates bf16 input in fp32 with our
  fp32 gamma/beta), the softmax inside SDPA (its CPU flash kernel accumulates in fp32), the MIT (8
  tokens per video: nothing to win, and its output is the video embedding), the text tower (run
  once per label set and cached, so its cost does not count per video) and the cosine-similarity
  tail: the prompt is added to the fp32 text features, both sides are normalised and dotted in fp32.

EVL (docs/model-evl.md §10, as the official evaluation runs it in fp16): the frozen backbone in bf16
(its conv, attention and MLPs; LayerNorm weights fp32, statistics fp32 as above); its taps (block
outputs, q and k) are cast back to fp32 at the backbone's boundary, and the decoder (temporal
modules, the query's attention) and the head run in fp32.
"""

from __future__ import annotations

import torch
from torch import nn

BF16_PARTS = ("visual", "prompts_generator")         # submodules whose weights are cast
BF16_PARAMS = ("prompts_visual_proj",)                # top-level parameters cast with them
EVL_BF16_PARTS = ("backbone",)                        # EVL: the frozen backbone only


def cpu_flags() -> set[str]:
    """The feature flags of this CPU as Linux lists them (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_amx_bf16() -> tuple[bool, str]:
    """(whether bf16 matmuls run on AMX here, the evidence). torch.backends.cpu.get_cpu_capability()
    stops at "AVX512", so the kernel's flag (amx_bf16) decides, with oneDNN's own bf16 check."""
    if "amx_bf16" not in cpu_flags():
        return False, "this CPU has no AMX bf16 (no amx_bf16 flag in /proc/cpuinfo)"
    mkldnn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if mkldnn_bf16 is not None and not mkldnn_bf16():
        return False, "the CPU has amx_bf16 but this torch build's oneDNN does not run bf16"
    return True, "this CPU has AMX bf16 (amx_bf16 in /proc/cpuinfo)"


def _cast_floats(args, dtype):
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _inputs_to(dtype):
    def hook(module, args):
        return _cast_floats(args, dtype)
    return hook


def _output_to_fp32(module, args, out):
    return out.float()


def _taps_to_fp32(module, args, out):
    # EVL's Backbone returns [(out, q, k)] per tapped block
    return [tuple(t.float() for t in tap) for tap in out]


def _cast_weights(modules, names=(), owner=None) -> None:
    """bf16 weights for every module under `modules` but LayerNorms (and the named top-level params)."""
    with torch.no_grad():
        for part in modules:
            for mod in part.modules():
                if isinstance(mod, nn.LayerNorm):
                    continue
                for p in mod.parameters(recurse=False):
                    p.data = p.data.to(torch.bfloat16)
        for name in names:
            p = getattr(owner, name)
            p.data = p.data.to(torch.bfloat16)


def is_bf16(net: nn.Module) -> bool:
    return getattr(net, "precision", "fp32") == "bf16"


def to_bf16(net: nn.Module) -> nn.Module:
    """Cast `net` (an XCLIP or an EVL) to the bf16 path in place, for inference; returns it. Idempotent.

    LayerNorm weights stay fp32 (the CPU kernel takes bf16 input with fp32 gamma/beta and computes
    the statistics in fp32); the module boundaries below cast activations in and out.
    """
    if is_bf16(net):
        return net
    if getattr(getattr(net, "config", None), "family", None) == "evl":
        return _evl_to_bf16(net)
    for name in ("visual", "mit", "prompts_generator", "prompts_visual_proj"):
        if not hasattr(net, name):
            raise TypeError(f"to_bf16 takes the reference XCLIP module, got {type(net).__name__} (no .{name}); "
                            "export folders run their own precisions: backend='onnxruntime', precision='int8'")
    _check_eval(net)
    _cast_weights([getattr(net, part) for part in BF16_PARTS], BF16_PARAMS, net)
    # dtype boundaries: pixels in as bf16; the MIT back in fp32 (its output is the video embedding);
    # the prompt generator's inputs (fp32 text features, visual tokens) in bf16 and its output,
    # scaled by alpha and added to the fp32 text features, back in fp32
    net._bf16_hooks = [
        net.visual.register_forward_pre_hook(_inputs_to(torch.bfloat16)),
        net.mit.register_forward_pre_hook(_inputs_to(torch.float32)),
        net.prompts_generator.register_forward_pre_hook(_inputs_to(torch.bfloat16)),
        net.prompts_generator.register_forward_hook(_output_to_fp32),
    ]
    net.precision = "bf16"
    return net


def _check_eval(net: nn.Module) -> None:
    if net.training:
        raise ValueError("to_bf16 is an inference path: call net.eval() first (training uses torch.autocast)")


def _evl_to_bf16(net: nn.Module) -> nn.Module:
    """EVL: the backbone's weights in bf16 (LayerNorms fp32), frames in as bf16, taps out as fp32."""
    if not hasattr(net, "backbone"):
        raise TypeError(f"to_bf16 takes the reference EVL module, got {type(net).__name__} (no .backbone)")
    _check_eval(net)
    _cast_weights([getattr(net, part) for part in EVL_BF16_PARTS])
    net._bf16_hooks = [
        net.backbone.register_forward_pre_hook(_inputs_to(torch.bfloat16)),
        net.backbone.register_forward_hook(_taps_to_fp32),
    ]
    net.precision = "bf16"
    return net

