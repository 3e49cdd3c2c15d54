"""The checks `xclip-engine export` runs on what it wrote: every graph against the reference model.

Each precision's graphs run in ONNX Runtime on CPU (through the same OrtNet a user gets, so the
fused and cached graph is what is checked) on a few sample videos and labels. Every output is
judged by engine/runtime/yardstick.py: its error against a float64 run of the reference model, bounded by
a small multiple of the reference's own error in the same precision (fp32 for the fp32 graphs,
PyTorch fp16 for the fp16 graphs and the TensorRT engines), plus top-1 agreement on the rows that
are not near-ties. A fixed tolerance between two fp32 computations failed a correct B/32 export on
an AMD CPU; this rule holds on any CPU and still catches a wrong graph by orders of magnitude.

fp32 graphs that fail make the export fail; fp16 and int8 graphs are reported with their verdict,
which `backend="auto"` reads (it never picks a precision that failed); a TensorRT engine that fails
is refused.

Where openvino is installed, the graphs are also checked as backend "openvino" runs them: the fp32
graphs in bf16 ("bf16 OpenVINO", judged by the reference model's own bf16 error under torch.autocast;
only on a CPU where OpenVINO runs bf16) and the int8 graphs ("int8 OpenVINO", judged like int8).
Their verdicts are recorded for `backend="auto"` like the others'.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import torch

from xclip_engine.engine.runtime.yardstick import MULTIPLE, Verdict, float64_copy, judge

from .graphs import family_of

__all__ = ["MULTIPLE", "Row", "bf16_reference", "check_precision", "check_engines", "check_openvino",
           "format_table", "yardstick"]
INT8_BOUND = 0.05   # int8 has no same-dtype reference: 5% of the logits' range, plus top-1


@dataclass
class Row:
    file: str
    bytes: int
    precision: str
    verdicts: list[Verdict]
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def worst(self) -> Verdict:
        return max(self.verdicts, key=lambda v: v.error / v.bound if v.bound > 0 else float(v.error > 0))

    def to_dict(self) -> dict:
        return {"file": self.file, "precision": self.precision, "ok": self.ok, "note": self.note,
                "outputs": {v.name: {"error": v.error, "reference_error": v.ref_error, "bound": v.bound,
                                     "top1": list(v.top1), "ok": v.ok} for v in self.verdicts}}


def sample_inputs(config, tokenizer, labels, batch: int = 2, seed: int = 0):
    """(ids [K, 77], pixels [B, T, 3, S, S]): the check's labels tokenized, and seeded normal pixels
    (preprocessed pixels are roughly standard normal: the normalisation's mean/std). ids is None
    for EVL, which has no text tower."""
    ids = None if family_of(config) == "evl" else tokenizer(list(labels), context_length=config.context_length)
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(batch, config.num_frames, 3, config.image_size, config.image_size, generator=g)
    return ids, px


@torch.inference_mode()
def reference_outputs(model, ids, px, dtype: torch.dtype = torch.float32) -> dict:
    """The reference model's text features, logits and video embeddings (EVL: logits and the query
    features), computed in `dtype` (a copy of the model is cast for float64 and float16; the model
    itself is left as it is)."""
    net = model if dtype == torch.float32 else (float64_copy(model) if dtype == torch.float64
                                                else copy.deepcopy(model).to(dtype).eval())
    if family_of(model.config) == "evl":
        video = net.encode_video(px.to(dtype))
        return {"logits": net.logits_from_features(video), "video": video}
    text = net.encode_text(ids)
    video, tokens = net.video_features(px.to(dtype))
    return {"text": text, "logits": net.logits_from_features(video, tokens, text), "video": video}


@torch.inference_mode()
def bf16_reference(model, ids, px) -> dict:
    """The reference model's outputs under torch's bf16 autocast on the CPU (as float32): the
    same-dtype reference of a bf16 path, whose own error against float64 bounds that path's."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reference_outputs(model, ids, px)
    return {k: v.float() for k, v in out.items()}


def yardstick(model, ids, px, precisions) -> dict:
    """{"fp64": exact outputs, "fp32": ..., "fp16": ... (when asked for)}: what every graph is judged by."""
    refs = {"fp64": reference_outputs(model, ids, px, torch.float64),
            "fp32": reference_outputs(model, ids, px)}
    if "fp16" in precisions:
        refs["fp16"] = reference_outputs(model, ids, px, torch.float16)
    return refs


@torch.inference_mode()
def runtime_outputs(net, ids, px) -> dict:
    if family_of(net.config) == "evl":
        logits, video = net.logits_and_features(px)      # one run of the video graph
        return {"logits": logits, "video": video}
    text = net.encode_text(ids)
    return {"text": text, "logits": net(px, text), "video": net.encode_video(px)}


def judge_outputs(out: dict, refs: dict, precision: str, prefix: str = "") -> dict[str, Verdict]:
    """Verdicts for text (X-CLIP), video and logits of one runtime against the yardstick."""
    same = refs.get(precision)
    bound = INT8_BOUND if same is None else None
    return {key: judge(f"{prefix}{key}", out[key], refs["fp64"][key], None if same is None else same[key],
                       precision, classes=key == "logits", bound=bound)
            for key in ("text", "video", "logits") if key in refs["fp64"]}


def _role_verdicts(v: dict, roles) -> list[tuple[str, list[Verdict]]]:
    """(role, its verdicts) per graph: the text graph gives the text features, the video graph the
    logits and the video embeddings."""
    return [(role, [v["text"]] if role == "text" else [v["logits"], v["video"]]) for role in roles]


def _fused_note(info: dict) -> str:
    fused = ", ".join(f"{k} {v}" for k, v in sorted(info.get("fused", {}).items()))
    status = info.get("fusion", "off")
    if status == "off":
        return "no fusion (fp32 graphs only)"
    return f"ORT fusions: {fused}" if status == "on" and fused else f"fusion {status}"


def check_precision(manifest, precision: str, refs: dict, ids, px) -> list[Row]:
    """Run one precision's two graphs through OrtNet on CPU; one Row per graph file."""
    from .ort_runner import OrtNet

    net = OrtNet(manifest, precision, "cpu")
    v = judge_outputs(runtime_outputs(net, ids, px), refs, precision)
    rows = []
    for role, verdicts in _role_verdicts(v, manifest.roles):
        path = manifest.path(role, precision)
        rows.append(Row(os.path.basename(path), os.path.getsize(path), precision, verdicts,
                        _fused_note(getattr(net, role).info)))
    return rows


def check_openvino(manifest, model, refs: dict, ids, px, echo=None, int8_inputs=None) -> list[Row]:
    """Rows "bf16 OpenVINO" (the fp32 graphs, bf16 inference) and "int8 OpenVINO" (the int8 graphs),
    run through OvNet; none when openvino is not installed. `refs` gains "bf16" (the reference under
    bf16 autocast) when the bf16 rows need it. `int8_inputs`: (refs, pixels) the int8 rows are judged
    on, when not these (onnx_export._run_checks: the calibration clips)."""
    from . import ov_runner

    try:
        ov_runner.require_openvino()
    except ov_runner.OpenVINOUnavailable:
        return []
    say = echo or (lambda _msg: None)
    rows = []
    for label, precision in (("bf16 OpenVINO", "bf16"), ("int8 OpenVINO", "int8")):
        if ov_runner.GRAPH_FILE[precision] not in manifest.precisions():
            continue
        if precision == "bf16" and not ov_runner.bf16_capable():
            say("OpenVINO does not run bf16 on this CPU: no bf16 OpenVINO check")
            continue
        say(f"checking the {ov_runner.GRAPH_FILE[precision]} graphs in OpenVINO ({precision}) against the "
            "reference ...")
        if precision == "bf16" and "bf16" not in refs:
            refs["bf16"] = bf16_reference(model, ids, px)
        p_refs, p_px = int8_inputs if precision == "int8" and int8_inputs is not None else (refs, px)
        rows += _openvino_rows(manifest, label, precision, p_refs, ids, p_px)
    return rows


def _openvino_rows(manifest, label: str, precision: str, refs: dict, ids, px) -> list[Row]:
    from .ov_runner import GRAPH_FILE, OvNet

    roles = manifest.roles
    try:
        net = OvNet(manifest, precision, "cpu")
        v = judge_outputs(runtime_outputs(net, ids, px), refs, precision)
        verdicts, notes = _role_verdicts(v, roles), {role: _ov_note(getattr(net, role).info) for role in roles}
    except Exception as e:   # a graph OpenVINO cannot run fails its row: auto will not take it
        why = f"OpenVINO failed: {type(e).__name__}: {str(e)[:200]}"
        failed = [Verdict(key, precision, float("inf"), float("nan"), 0.0, (0, 0), False, why)
                  for key in ("text", "logits", "video")]
        verdicts = _role_verdicts(dict(zip(("text", "logits", "video"), failed)), roles)
        notes = {role: why for role in roles}
    rows = []
    for role, role_verdicts in verdicts:
        path = manifest.path(role, GRAPH_FILE[precision])
        rows.append(Row(os.path.basename(path), os.path.getsize(path), label, role_verdicts, notes[role]))
    return rows


def _ov_note(info: dict) -> str:
    return f"OpenVINO {info['openvino'].split('-')[0]}, inference precision {info['inference_precision']}"


def check_engines(net, trt_info: dict, folder: str, refs: dict, ids, px) -> list[Row]:
    """The TensorRT engines (fp16) on the check's inputs, judged like the fp16 graphs."""
    out = {k: t.float().cpu() for k, t in runtime_outputs(net, ids, px).items()}
    v = judge_outputs(out, refs, "fp16")
    roles = [r for r in ("text", "video") if r in trt_info]
    return [Row(trt_info[role]["file"], os.path.getsize(os.path.join(folder, trt_info[role]["file"])),
                "fp16 TensorRT", verdicts)
            for role, verdicts in _role_verdicts(v, roles)]


def format_table(rows: list[Row]) -> str:
    """One line per (graph, output): the path's error against float64, the same-dtype reference's
    own error, the bound, top-1, and the verdict."""
    head = ("file", "size", "precision", "output", "error", "ref's own", "bound", "top-1", "verdict")
    body = []
    for r in rows:
        for i, v in enumerate(r.verdicts):
            body.append((r.file if i == 0 else "", _size(r.bytes) if i == 0 else "", r.precision if i == 0 else "",
                         v.name, f"{v.error:.2e}", "-" if v.ref_error != v.ref_error else f"{v.ref_error:.2e}",
                         f"{v.bound:.2e}", f"{v.top1[0]}/{v.top1[1]}" if v.top1[1] else "-",
                         "ok" if v.ok else f"FAIL: {v.why}"))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]
    lines.insert(1, "-" * max(len(x) for x in lines))
    notes = [f"{r.file}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + notes)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
