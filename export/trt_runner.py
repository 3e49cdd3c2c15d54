"""TensorRT engines from the fp16 graphs, and the runner behind `xe.load(DIR, backend="tensorrt")`.

Build: each fp16 ONNX graph (LayerNorm, Softmax, reductions already fp32 with explicit Casts, see
precision.py) is parsed into a strongly typed network, the form TensorRT 10 builds and the only
one TensorRT 11 has (it removed BuilderFlag.FP16, docs/machines.md §5), with one optimization
profile over the dynamic axes: videos B in 1..max_batch, labels K in 1..max_labels, tokens L in
1..77. Run: named-tensor I/O on torch CUDA tensors (set_input_shape, set_tensor_address,
execute_async_v3 on a stream of the engine's device, every TensorRT call under
torch.cuda.device). Calls larger than a profile are split, because videos are independent and so
are labels (the prompt generator works per video-label pair). An EVL folder has one engine, the
video graph's (pixel_values -> logits, video_embeds), with a profile over B alone.
API: TensorRT Python API, "Migrating from TensorRT 8.x to 10.x" (named tensors, enqueueV3).
"""

from __future__ import annotations

import contextlib
import os

import torch

from xclip_engine.engine.io.atomic import atomic_write
from xclip_engine.engine.model.layers import causal_eot_trim

from .graphs import family_of
from .manifest import CACHE_DIR, ROLES, ExportFolderError, Manifest, verify_file


class TensorRTUnavailable(RuntimeError):
    """No GPU or no tensorrt package: the TensorRT build or run cannot happen here."""


def require_tensorrt():
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs an NVIDIA GPU and this machine has none (torch.cuda.is_available() "
                                  "is False); build the engines on the GPU machine that will run them: "
                                  "xclip-engine export --model SOURCE --out DIR --tensorrt")
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable("the tensorrt package is not installed; on a GPU machine: bash scripts/setup.sh "
                                  "gpu, or pip install 'xclip-engine[gpu]' (its CUDA 12 build, tensorrt-cu12)"
                                  ) from None
    return trt


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def build_engine(onnx_path: str, plan_path: str, profile: dict[str, tuple], workspace_gib: float = 4.0,
                 device=None) -> None:
    """Parse `onnx_path` strongly typed, build with one profile {input: (min, opt, max) shapes}, write the plan.

    The engine is built for (and timed on) `device`, torch's current CUDA device when None: TensorRT
    builds on the device that is current, so the build runs under torch.cuda.device(device).
    """
    trt = require_tensorrt()
    with torch.cuda.device(torch.device("cuda") if device is None else torch.device(device)):
        _build(trt, onnx_path, plan_path, profile, workspace_gib)


def _build(trt, onnx_path, plan_path, profile, workspace_gib) -> None:
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.path.abspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser refused the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    atomic_write(plan_path, lambda f: f.write(plan))   # a killed build leaves no half engine


def profiles(config, max_batch: int, max_labels: int) -> dict[str, dict[str, tuple]]:
    """The optimization profile of each graph: (min, opt, max) shape of every input."""
    t, s = config.num_frames, config.image_size
    b_opt = max(1, min(max_batch, 8))
    if family_of(config) == "evl":
        return {"video": {"pixel_values": ((1, t, 3, s, s), (b_opt, t, 3, s, s), (max_batch, t, 3, s, s))}}
    e, c = config.embed_dim, config.context_length
    k_opt = max(1, min(max_labels, 400))
    return {
        "text": {"input_ids": ((1, 1), (k_opt, 16), (max_labels, c))},
        "video": {"pixel_values": ((1, t, 3, s, s), (b_opt, t, 3, s, s), (max_batch, t, 3, s, s)),
                  "text_features": ((1, e), (k_opt, e), (max_labels, e))},
    }


class _Engine:
    """One deserialized engine and its execution context; runs on torch tensors on its GPU.

    TensorRT binds an engine to the device that is current when it is deserialized, and its execution
    contexts to the engine's device; enqueueV3 must then run with that device current, on a stream of
    that device (TensorRT FAQ, "How do I use TensorRT on multiple GPUs?"). torch leaves device 0 current
    whatever device a model is on, so every TensorRT call here runs under torch.cuda.device(device):
    for a model on cuda:1, deserializing on device 0 and running on device 1 fails or reads memory of
    the wrong GPU.
    """

    def __init__(self, trt, path: str, device: torch.device):
        with open(path, "rb") as f:
            data = f.read()
        self.device = torch.device(device)
        self.trt = trt
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(_logger(trt))
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise ExportFolderError(
                    f"{path}: TensorRT {trt.__version__} cannot load this engine (built by another TensorRT "
                    "version or for another GPU, or this tensorrt package is for another CUDA major than the "
                    "driver: on a CUDA 12 driver it must be tensorrt-cu12); rebuild it on this machine: "
                    "xclip-engine export --model SOURCE --out DIR --tensorrt")
            self.context = self.engine.create_execution_context()
            # its own stream: TensorRT warns that enqueueV3 on the default stream (torch's current one
            # unless the caller set another) costs extra synchronizations
            self.stream = torch.cuda.Stream(device=self.device)
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.outputs = [n for n in names if n not in self.inputs]

    def __call__(self, **feeds: torch.Tensor) -> list[torch.Tensor]:
        with torch.cuda.device(self.device):
            keep = []   # the inputs on the device, alive until the engine has run
            for name in self.inputs:
                x = feeds[name].to(self.device, self.dtypes[name]).contiguous()
                keep.append(x)
                self.context.set_input_shape(name, tuple(x.shape))
                self.context.set_tensor_address(name, x.data_ptr())
            outs = []
            for name in self.outputs:
                y = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                device=self.device)
                self.context.set_tensor_address(name, y.data_ptr())
                outs.append(y)
            # the inputs were copied and the outputs allocated on torch's current stream of the device
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see its log above)")
            # synchronized: the inputs may be freed and the outputs read on any stream once this returns
            self.stream.synchronize()
        return outs


def _torch_dtype(trt, dt):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool}
    return table[dt]


class TrtNet:
    """The TensorRT engines of an export folder behind the net interface of engine.api.Model."""

    def __init__(self, manifest: Manifest, device):
        trt = require_tensorrt()
        self.device = torch.device(device) if device is not None else torch.device("cuda")
        if self.device.type != "cuda":
            raise ValueError(f"backend 'tensorrt' runs on a CUDA device, not {self.device}")
        if self.device.index is None:
            # pinned now: the engines are bound to the device current at load, whatever is current later
            self.device = torch.device("cuda", torch.cuda.current_device())
        info = manifest.tensorrt
        if not info:
            raise ExportFolderError(f"{manifest.folder}: has no TensorRT engines; build them on this GPU machine: "
                                    f"xclip-engine export --model SOURCE --out {manifest.folder} --tensorrt")
        built = info.get("tensorrt_version")
        if built and built != trt.__version__:
            raise ExportFolderError(f"{manifest.folder}: engines built with TensorRT {built}, this is "
                                    f"{trt.__version__}; engines do not move between versions: rebuild with "
                                    "xclip-engine export --tensorrt")
        self.config = manifest.config
        self.family = family_of(self.config)
        roles = getattr(manifest, "roles", ROLES)
        self.max_batch, self.max_labels = int(info["max_batch"]), int(info["max_labels"])
        for role in roles:
            if not isinstance(info.get(role), dict):
                raise ExportFolderError(f"{manifest.folder}/manifest.json: the TensorRT section has no {role} "
                                        "engine; rebuild them: xclip-engine export --model SOURCE --out "
                                        f"{manifest.folder} --tensorrt")
        # the plans' content is checked before TensorRT deserializes them (the ONNX graphs are not read
        # here); cache/ holds the verified hashes, so a repeat load does not read the plans twice
        with contextlib.suppress(OSError):
            os.makedirs(os.path.join(manifest.folder, CACHE_DIR), exist_ok=True)
        paths = {role: os.path.join(manifest.folder, info[role]["file"]) for role in roles}
        for role in paths:
            verify_file(manifest.folder, info[role], f"TensorRT {role} engine")
        self.text = _Engine(trt, paths["text"], self.device) if "text" in paths else None
        self.video = _Engine(trt, paths["video"], self.device)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        if self.text is None:
            raise NotImplementedError("an EVL export is a closed-set classifier with no text tower: its logits are "
                                      "the scores of its classes (net(pixel_values))")
        ids = ids[:, : causal_eot_trim(ids)]
        parts = [self.text(input_ids=chunk)[0] for chunk in ids.split(self.max_labels)]
        return torch.cat(parts).float()

    def _video(self, pixel_values, text):
        logits, videos = [], []
        if text is None:    # EVL: one engine call per chunk of at most max_batch videos
            for px in pixel_values.split(self.max_batch):
                lg, v = self.video(pixel_values=px)
                logits.append(lg)
                videos.append(v)
            return torch.cat(logits).float(), torch.cat(videos).float()
        for px in pixel_values.split(self.max_batch):
            cols, v = [], None
            for t in text.split(self.max_labels):
                lg, v = self.video(pixel_values=px, text_features=t)
                cols.append(lg)
            logits.append(torch.cat(cols, dim=1))
            videos.append(v)
        return torch.cat(logits).float(), torch.cat(videos).float()

    def encode_video(self, pixel_values):
        if self.family == "evl":
            return self._video(pixel_values, None)[1]
        return self._video(pixel_values, torch.zeros(1, self.config.embed_dim, device=self.device))[1]

    def logits_and_features(self, pixel_values):
        """EVL: (logits [B, classes], video features [B, C]) from one pass of the video engine."""
        if self.family != "evl":
            raise NotImplementedError("logits_and_features is EVL's; X-CLIP's logits need text features")
        return self._video(pixel_values, None)

    def video_features(self, pixel_values):
        raise NotImplementedError("the TensorRT video engine returns logits and video embeddings, not the visual "
                                  "tokens; use backend='reference' for video_features")

    def __call__(self, pixel_values, text_features=None):
        if self.family == "evl":
            if text_features is not None:
                raise TypeError("an EVL engine takes pixel values only: net(pixel_values) -> class logits")
        elif text_features is None:
            raise TypeError("an X-CLIP engine needs text features: net(pixel_values, text_features)")
        return self._video(pixel_values, text_features)[0]
