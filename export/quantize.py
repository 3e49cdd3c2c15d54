"""Static int8 quantization of an exported video graph (`xclip-engine export --int8`).

    keep = layers_kept_in_float(fp32_graph)          # node names that stay fp32 (see below)
    quantize_static_int8(src, dst, feeds, keep)      # calibrated QDQ graph, written to dst

Weights and activations are int8: ONNX Runtime's static quantizer inserts QuantizeLinear /
DequantizeLinear pairs (the QDQ format) in front of each quantized MatMul, Gemm and Conv, with
per-output-channel weight scales and activation scales calibrated (min/max) on a handful of real
inputs (calibration.py). QDQ is the format every CPU runtime reads: ONNX Runtime fuses the pairs
into its int8 kernels, and OpenVINO (the faster of the two on our graphs, see the README's ladder)
runs the same file on VNNI / AMX int8 instructions.

Which layers stay in float, and how that was found: benchmarks/int8_sensitivity.py quantizes with
one more group kept float at a time and measures top-1 agreement with the fp32 graph (and the max
logit error, as a share of the logit range):

| kept float                     | B/32, realistic weights, 32 videos | bundled model, 232 held-out clips |
| ------------------------------ | ---------------------------------- | --------------------------------- |
| nothing                        | 90.6% (8.6%)                       | 97.8% (15.4%)                     |
| + products of two activations  | 100% (2.8%)                        | 97.8% (11.9%)                     |
| + cross-frame message modules  | 100% (2.8%)                        | 97.8% (12.1%)                     |
| + everything outside the blocks| 96.9% (2.6%)                       | 99.1% (5.8%)                      |

(B/32: 1/sqrt(fan-in) weights, seeded normal videos, 400 Kinetics labels, calibrated on 8 other
such videos; the last row flips one video of 32, and has the smallest error. The
bundled model: its own 80 labels, calibrated on 8 other test clips. AMD EPYC, 2 cores.)
- The products of two activations (attention's q.k and weights.v) have nothing to pre-scale per
  channel, and the softmax side spans orders of magnitude: the largest single gain on B/32.
- Outside the vision transformer's blocks: the patch embedding, the projections, the MIT, the
  prompt generator, EVL's decoder and head: the largest gain on the bundled model, and the smallest
  error on both.
- X-CLIP's cross-frame message modules showed no effect either way at these sample sizes; they are
  kept float as a precaution (one token per frame carries all that the frames tell each other, so
  its error reaches every token of the next layer) at no measurable cost: under 1% of the FLOPs.
Together the float layers are about 5% of a B/32 video's FLOPs at K = 400 (most of it the prompt
generator, which runs per label). The logit scale's exp, the
normalisations and LayerNorms are never quantized (not MatMul/Gemm/Conv).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile

import onnx

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
# int8 only inside the vision transformer's blocks (by the exporter's module namespace), where
# 95% of a video's FLOPs are; the patch embedding, the projections and the heads stay float
BLOCKS = re.compile(r"model\.(visual|backbone)\.blocks\.\d+")
# within the blocks: X-CLIP's cross-frame message modules stay float
FLOAT_MODULES = (".message_",)


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors computed from initializers and Constants alone (a transposed weight is still a weight)."""
    const = {t.name for t in graph.initializer}
    for node in graph.node:             # topological order: producers come first
        if node.op_type == "Constant" or (node.input and all(i in const for i in node.input if i)):
            const.update(node.output)
    return const


def _namespace(node: onnx.NodeProto) -> str:
    # torch.onnx's dynamo exporter records the module path of each node ("model.visual.blocks.0.message_fc: ...")
    return next((p.value for p in node.metadata_props if p.key == "namespace"), "")


def layers_kept_in_float(model: onnx.ModelProto) -> dict[str, str]:
    """{node name: why it stays float} for the quantizable nodes that the rule above keeps in float.

    A graph without the exporter's namespaces (not from torch.onnx's dynamo exporter) cannot be told
    apart by module: there only the products of two activations stay float."""
    const = _constant_tensors(model.graph)
    named = any(_namespace(n) for n in model.graph.node)
    keep = {}
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        where = _namespace(node)
        if node.op_type == "MatMul" and not any(i in const for i in node.input):
            keep[node.name] = "a product of two activations (attention)"
        elif named and not BLOCKS.search(where):
            keep[node.name] = "outside the vision transformer's blocks (patch embedding, projections, heads)"
        elif any(m in where for m in FLOAT_MODULES):
            keep[node.name] = "cross-frame message module"
    return keep


def _reader(feeds: list[dict]):
    """ONNX Runtime's CalibrationDataReader over a list of feed dicts (one calibration pass)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    return Feeds()


def quantize_static_int8(src: str, dst: str, feeds: list[dict], keep: dict[str, str]) -> dict:
    """Calibrate on `feeds` (input name -> array, one dict per batch) and write the QDQ int8 graph of
    the fp32 graph at `src` to `dst`. Returns how it was done, for the manifest."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)       # the quantizer's hints are for its own developers, not our users
    try:
        with tempfile.TemporaryDirectory(prefix="xclip-int8-", dir=os.path.dirname(os.path.abspath(dst))) as tmp:
            # shape inference and constant folding first, as the quantizer expects (it keeps node names,
            # which `keep` refers to); the calibration runs write their augmented graph to tmp too
            pre = os.path.join(tmp, "pre.onnx")
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            quantize_static(pre, dst, _reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=list(keep),
                            calibrate_method=CalibrationMethod.MinMax,
                            # symmetric activations: VNNI's u8 x s8 kernels then need no zero-point terms
                            extra_options={"ActivationSymmetric": True},
                            calibration_providers=["CPUExecutionProvider"])
    finally:
        root.setLevel(level)
    return {"method": "static QDQ (ONNX Runtime quantize_static, MinMax, per-channel int8 weights, "
                      "symmetric int8 activations)",
            "kept_float_why": sorted(set(keep.values()))}
