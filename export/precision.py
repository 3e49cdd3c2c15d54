"""Lower-precision variants of an exported fp32 graph: mixed fp16 here; static int8 in quantize.py.

fp16 (for GPUs, TensorRT 10 strongly typed and 11): weights and matmuls in fp16; layer norm,
softmax, reductions, the cosine-similarity tail (normalise, dot product, exp of the logit scale)
kept in fp32 with explicit Casts; inputs and outputs stay fp32, so callers feed the same arrays.
The converter is ONNX Runtime's `onnxruntime.transformers.float16` (the maintained copy of
onnxconverter-common's), driven by the block lists below.

int8 (for CPUs) is static, calibrated quantization: export/quantize.py.
"""

from __future__ import annotations

import onnx
from onnx import helper

# Ops whose fp16 form loses range or accuracy: statistics (LayerNorm), exponentials (Softmax, Exp),
# sums of many terms (reductions, the final dot product) and the divisions of the normalisation.
FP16_BLOCKED_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceL2", "ReduceMax", "Sqrt",
                    "Div", "Clip", "Exp", "Einsum", "ArgMax", "Range", "Where")
L2_SQUARE_SUFFIX = "_l2_square"   # the Mul nodes that square x for a norm: fp32, or |x| > 256 overflows


def expand_reduce_l2(model: onnx.ModelProto) -> int:
    """Rewrite ReduceL2(x, axes) as Sqrt(ReduceSum(x * x, axes)), in place; returns how many.

    The same arithmetic; done because ONNX Runtime's symbolic shape inference, which its transformer
    optimizer needs before fusing skip + layer norm, cannot type ReduceL2 with opset-18 axes inputs
    (F.normalize exports as ReduceL2), and without shapes no SkipLayerNormalization fuses anywhere.
    """
    nodes, count = [], 0
    for n in model.graph.node:
        if n.op_type != "ReduceL2" or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        count += 1
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        base = n.name or f"reduce_l2_{count}"
        sq, total = f"{n.output[0]}{L2_SQUARE_SUFFIX}", f"{n.output[0]}_sum_of_squares"
        nodes += [helper.make_node("Mul", [n.input[0], n.input[0]], [sq], name=base + L2_SQUARE_SUFFIX),
                  helper.make_node("ReduceSum", [sq, *n.input[1:2]], [total],
                                   name=base + "_sum", **attrs),
                  helper.make_node("Sqrt", [total], [n.output[0]], name=base + "_sqrt")]
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return count


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Mixed-precision copy of an fp32 graph (see the module docstring for what stays fp32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    blocked_nodes = [n.name for n in model.graph.node if n.name.endswith(L2_SQUARE_SUFFIX)]
    model = onnx.ModelProto.FromString(model.SerializeToString())   # the converter edits its input in place
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP16_BLOCKED_OPS),
                                    node_block_list=blocked_nodes, disable_shape_infer=False)
    _tidy(half)
    OnnxModel(half).topological_sort()   # the converter appends the input Casts last; ONNX wants them first
    return half


def _tidy(model: onnx.ModelProto) -> int:
    """Drop repeated Cast nodes that write the same output, and stale value_info; returns how many Casts.

    The converter names the fp32 Cast in front of a blocked node after the tensor it reads, so a
    tensor read by two blocked nodes (an output also fed to the normalisation; an initializer the
    exporter shared between alike LayerNorms) gets two identical Casts with one output name, which
    ONNX rejects (not single assignment). The copies compute the same value: one is kept. The
    converter also marks initializers it left fp32 as fp16 in value_info; initializers carry their
    own type, so those entries are dropped.
    """
    seen, keep, dropped = set(), [], 0
    for n in model.graph.node:
        if n.op_type == "Cast" and n.output[0] in seen:
            dropped += 1
            continue
        seen.update(n.output)
        keep.append(n)
    if dropped:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    skip = {t.name for t in model.graph.initializer}
    unique = []
    for vi in model.graph.value_info:
        if vi.name not in skip:
            skip.add(vi.name)
            unique.append(vi)
    del model.graph.value_info[:]
    model.graph.value_info.extend(unique)
    return dropped
