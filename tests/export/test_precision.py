"""fp16 and int8 graphs: the intended ops in fp32, fp16 within docs/tolerances.md §5, int8 top-1 agreement
on the bundled model (full-size B/32: tests/parity/test_export_parity.py)."""

import copy
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import assert_close
from onnx import TensorProto, helper

import xclip_engine as xe
from xclip_engine.engine.api import default_model_path
from xclip_engine.engine.io.labels import load_labels
from xclip_engine.export.onnx_export import export_model
from xclip_engine.export.precision import FP16_BLOCKED_OPS, L2_SQUARE_SUFFIX, expand_reduce_l2
from xclip_engine.export.runtime import load_runtime

FP32_OPS = {"LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Sqrt", "Div", "Einsum"}


def _input_types(path):
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return model, types


@pytest.mark.parametrize("role", ["text", "video"])
def test_fp16_graph_keeps_the_intended_ops_in_fp32(tiny_export, role):
    path = os.path.join(tiny_export.folder, f"{role}.fp16.onnx")
    onnx.checker.check_model(path, full_check=True)
    model, types = _input_types(path)
    assert all(v.type.tensor_type.elem_type != TensorProto.FLOAT16 for v in [*model.graph.input, *model.graph.output])
    seen = set()
    for n in model.graph.node:
        t = types.get(n.input[0]) if n.input else None
        if n.op_type in FP32_OPS or n.name.endswith(L2_SQUARE_SUFFIX):
            assert t == TensorProto.FLOAT, f"{n.op_type} {n.name} reads {TensorProto.DataType.Name(t or 0)}"
            seen.add(n.op_type)
        elif n.op_type in ("MatMul", "Gemm", "Conv"):
            assert t == TensorProto.FLOAT16, f"{n.op_type} {n.name} should run in fp16"
            seen.add(n.op_type)
    assert {"LayerNormalization", "Softmax", "MatMul"} <= seen
    if role == "video":
        assert {"ReduceMean", "ReduceSum", "Div", "Einsum", "Conv"} <= seen
    assert set(FP16_BLOCKED_OPS) >= FP32_OPS


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(7)
    return torch.randn(6, 4, 3, 32, 32, generator=g), load_labels("k400")[:24]


def test_fp16_within_tolerance_of_design(tiny_export, reference, inputs):
    px, labels = inputs
    half = load_runtime(tiny_export.folder, "onnxruntime", "cpu", precision="fp16")
    ids = reference.tokenizer(labels)
    with torch.inference_mode():
        text32 = reference.net.encode_text(ids)
        logits32 = reference.net(px, text32)
        net16 = copy.deepcopy(reference.net).half()      # a copy: the shared reference stays fp32
        text16 = net16.encode_text(ids)
        logits16 = net16(px.half(), text16)
    text = half.encode_text(labels)
    logits = half.logits(px, text)
    for name, got, want, torch16 in (("text", text, text32, text16), ("logits", logits, logits32, logits16)):
        torch_err = float((torch16.double() - want.double()).abs().max())
        assert_close(got, want, rtol=0.0, atol=2 * torch_err + 1e-3,
                     name=f"fp16 {name} (torch fp16 err {torch_err:.3g})")
    assert torch.equal(logits.argmax(-1), logits32.argmax(-1))


def test_reduce_l2_rewrite_is_the_same_arithmetic(tmp_path):
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [-1])
    node = helper.make_node("ReduceL2", ["x", "axes"], ["y"], name="norm", keepdims=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], [axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert expand_reduce_l2(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Mul", "ReduceSum", "Sqrt"]
    onnx.checker.check_model(model, full_check=True)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got[:, 0], np.linalg.norm(x, axis=-1), rtol=1e-6)


def test_int8_top1_agrees_with_fp32_on_the_bundled_models_test_clips(shapes_test_clips, tmp_path):
    # >= 99% on the bundled model's 240 held-out clips, which (unlike random init) has real margins
    # between its classes; int8 calibrated on the built-in clips (none of them a test clip)
    paths, _, names = shapes_test_clips
    export_model(default_model_path(), str(tmp_path / "onnx"), fp16=False, int8=True, echo=lambda *_: None)
    top1 = {}
    for precision in ("fp32", "int8"):
        m = xe.load(str(tmp_path / "onnx"), backend="onnxruntime", precision=precision)
        top1[precision] = [p.top[0][0] for p in m.classify(paths, names, topk=1, batch_size=16)]
    agree = sum(a == b for a, b in zip(top1["fp32"], top1["int8"]))
    print(f"bundled model: int8 top-1 agrees with fp32 on {agree}/{len(paths)} held-out clips")
    assert agree >= 0.99 * len(paths), f"int8 agrees with fp32 on {agree}/{len(paths)} clips"
