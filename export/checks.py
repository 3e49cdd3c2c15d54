"""The checks `xclip-engine export` runs on what it wrote: every graph against the reference model.

Each precision's graphs run in ONNX Runtime on CPU (through the same OrtNet a user gets, so the
fused and cached graph is what is checked) on a few sample videos and labels; errors are relative
to the largest reference magnitude, like tests/helpers.assert_close. fp32 must agree within 1e-4
(DESIGN.md section 6) or the export fails; fp16 and int8 report their error and top-1 agreement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

FP32_RTOL = 1e-4


@dataclass
class Row:
    file: str
    bytes: int
    precision: str
    max_error: float | None       # relative to max |reference|; None when not measured
    note: str = ""
    ok: bool = True
    extra: dict = field(default_factory=dict)


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    if not torch.isfinite(got).all():
        return float("inf")
    scale = float(want.abs().max()) or 1.0
    return float((got - want).abs().max()) / scale


def sample_inputs(config, tokenizer, labels, batch: int = 2, seed: int = 0):
    """(ids [K, 77], pixels [B, T, 3, S, S]): the check's labels tokenized, and seeded normal pixels
    (preprocessed pixels are roughly standard normal, DESIGN.md section 1's mean/std)."""
    ids = tokenizer(list(labels), context_length=config.context_length)
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(batch, config.num_frames, 3, config.image_size, config.image_size, generator=g)
    return ids, px


@torch.inference_mode()
def reference_outputs(model, ids, px) -> dict:
    text = model.encode_text(ids)
    video, tokens = model.video_features(px)
    return {"text": text, "logits": model.logits_from_features(video, tokens, text), "video": video}


@torch.inference_mode()
def runtime_outputs(net, ids, px) -> dict:
    text = net.encode_text(ids)
    return {"text": text, "logits": net(px, text), "video": net.encode_video(px)}


def _fused_note(info: dict) -> str:
    fused = ", ".join(f"{k} {v}" for k, v in sorted(info.get("fused", {}).items()))
    status = info.get("fusion", "off")
    if status == "off":
        return "no fusion (fp32 graphs only)"
    return f"ORT fusions: {fused}" if status == "on" and fused else f"fusion {status}"


def check_precision(manifest, precision: str, ref: dict, ids, px) -> list[Row]:
    """Run one precision's two graphs through OrtNet on CPU; one Row per graph file."""
    from .ort_runner import OrtNet

    net = OrtNet(manifest, precision, "cpu")
    out = runtime_outputs(net, ids, px)
    text_err = rel_error(out["text"], ref["text"])
    logit_err = rel_error(out["logits"], ref["logits"])
    video_err = rel_error(out["video"], ref["video"])
    agree = int((out["logits"].argmax(-1) == ref["logits"].argmax(-1)).sum())
    rows = []
    for role, err, note in (("text", text_err, _fused_note(net.text.info)),
                            ("video", max(logit_err, video_err),
                             f"logits {logit_err:.2e}, embeds {video_err:.2e}, top-1 {agree}/{len(px)}; "
                             + _fused_note(net.video.info))):
        path = manifest.path(role, precision)
        ok = err <= FP32_RTOL if precision == "fp32" else bool(np.isfinite(err))
        rows.append(Row(os.path.basename(path), os.path.getsize(path), precision, err, note, ok,
                        {"top1_agree": agree, "videos": len(px)} if role == "video" else {}))
    return rows


def check_engines(net, trt_info: dict, folder: str, ref: dict, ids, px) -> list[Row]:
    """The TensorRT engines (fp16) on the check's inputs: error and top-1 agreement, reported."""
    out = runtime_outputs(net, ids, px)
    agree = int((out["logits"].cpu().argmax(-1) == ref["logits"].argmax(-1)).sum())
    errs = {"text": rel_error(out["text"], ref["text"]),
            "video": max(rel_error(out["logits"], ref["logits"]), rel_error(out["video"], ref["video"]))}
    return [Row(trt_info[role]["file"], os.path.getsize(os.path.join(folder, trt_info[role]["file"])), "fp16 TensorRT",
                errs[role], f"top-1 {agree}/{len(px)}" if role == "video" else "", bool(np.isfinite(errs[role])))
            for role in ("text", "video")]


def format_table(rows: list[Row]) -> str:
    head = ("file", "size", "precision", "max error", "note")
    body = [(r.file, _size(r.bytes), r.precision, "-" if r.max_error is None else f"{r.max_error:.2e}"
             + ("" if r.ok else " FAIL"), r.note) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(4)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line[:4], widths)) + "  " + line[4] for line in [head, *body]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
