"""ONNX Runtime runner for an export folder: the `net` behind `xe.load(DIR, backend="onnxruntime")`.

Two sessions (text, video) with the interface Model expects of a net: `.config`, `encode_text(ids)`,
`encode_video(px)`, `video_features(px)`, `__call__(px, text) -> logits`, torch tensors in and out.
An EVL folder has one session (video) and EVL's calls: `encode_video(px)`, `__call__(px) -> logits`.

Before anything is built or read from the cache, the graph's content is checked against the
manifest's sha256 (manifest.verify_file): a graph changed in place, same size or not, is refused
with an error naming it. Per graph, once per machine (cached in DIR/cache/, keyed by that verified
sha256, the ONNX Runtime version and the providers: CUDA then CPU on a GPU, CPU alone otherwise;
never ORT's TensorRT provider, see available_providers):
1. ONNX Runtime's transformer optimizer fuses what it recognises (LayerNormalization, QuickGelu,
   SkipLayerNormalization with the CUDA provider, Attention where the pattern holds) into contrib ops;
2. the fused graph must agree with the plain one on sample inputs (1e-4 relative), else the plain
   graph is used and the reason recorded;
3. the session runs with all graph optimizations on and writes its optimized model to the cache,
   which later loads read directly.
A cache entry is served only when its info file names the verified sha256 of the source graph and
the optimized graph still has the sha256 recorded when it was written (hashed through the stat cache
of manifest.hash_file, so an unchanged entry is not re-read); otherwise it is rebuilt, with a warning.
What remains between the check and ONNX Runtime opening the file is a window of milliseconds, not a
state that outlives the load.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import torch

from xclip_engine.engine.io.atomic import atomic_write, write_via_temp
from xclip_engine.engine.model.layers import causal_eot_trim

from .graphs import family_of
from .manifest import CACHE_DIR, ExportFolderError, Manifest, hash_file

FUSION_RTOL = 1e-4
# f2: no SkipLayerNormalization on the CPU provider; the CUDA provider (which has kernels for every
# contrib op fuse() writes) gets the full recipe
FUSION_RECIPE = "f2"


def available_providers(device: torch.device) -> list[str]:
    """CUDA then CPU when the device is cuda and onnxruntime-gpu has the CUDA provider; CPU alone otherwise.

    Never ONNX Runtime's TensorRT provider, even where the package has it: ORT cannot save an optimized
    model holding TensorRT-compiled nodes (the cache below would never be written, so a big graph is
    built again on every load), it would get no min/opt/max shape profile (its engine is rebuilt each
    time the batch or label count leaves the range seen so far), and the com.microsoft ops that fuse()
    writes are not TensorRT ops, so they split the graph into many small engines. TensorRT has its own
    backend with explicit profiles: trt_runner.py, `backend="tensorrt"`.
    """
    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    warnings.warn("device is cuda but this onnxruntime has no CUDA provider (the CPU package is installed?): "
                  "running on CPU. On a GPU machine install onnxruntime-gpu in place of onnxruntime "
                  "(bash scripts/setup.sh gpu, or pip install 'xclip-engine[gpu]' after pip uninstall "
                  "onnxruntime)", stacklevel=3)
    return ["CPUExecutionProvider"]


def _device_id(device: torch.device) -> int:
    """The CUDA ordinal of `device`: cuda:1 -> 1; a bare "cuda" is torch's current device, as in torch."""
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def _provider_options(providers: list[str], device: torch.device) -> list[dict]:
    opts = []
    for p in providers:
        if p == "CUDAExecutionProvider":
            # use_tf32 0: ORT's CUDA provider runs fp32 MatMuls in TF32 by default (a 10-bit mantissa,
            # ~1e-3 relative), which would make the fp32 graph fail the fusion check's 1e-4 and disagree
            # with torch's fp32 (TF32 off by default). The fp16 graph is the fast GPU path.
            opts.append({"device_id": _device_id(device), "use_tf32": 0})
        else:
            opts.append({})
    return opts


def sample_feeds(manifest: Manifest, role: str, batch: int = 2, labels: int = 3, seed: int = 0) -> dict:
    """Small deterministic inputs of a graph, for parity checks: token-like ids, normal pixels and features."""
    c = manifest.config
    rng = np.random.default_rng(seed)
    if role == "text":
        ids = np.zeros((labels, 8), dtype=np.int64)
        ids[:, 0] = 49406                                  # <|startoftext|>
        for r in range(labels):
            n = 2 + r % 5                                  # rows of different lengths
            ids[r, 1:1 + n] = rng.integers(1, 49400, n)
            ids[r, 1 + n] = 49407                          # <|endoftext|>, the row's argmax
        return {"input_ids": ids}
    px = rng.standard_normal((batch, c.num_frames, 3, c.image_size, c.image_size), np.float32)
    if family_of(c) == "evl":
        return {"pixel_values": px}
    return {"pixel_values": px, "text_features": rng.standard_normal((labels, c.embed_dim), np.float32)}


def _session(model, providers, provider_options, level="all", optimized_path=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all"
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3   # ORT's warnings about unused initializers are noise to a user
    # One thread setting for both runtimes: torch's (one per core unless `--threads` or
    # torch.set_num_threads says otherwise), which is also ONNX Runtime's own default.
    so.intra_op_num_threads = torch.get_num_threads()
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=providers, provider_options=provider_options)


def _warn_if_fell_back(session, providers: list[str]) -> bool:
    """True, with a warning, when ONNX Runtime started without the CUDA provider that was asked for.

    ORT does not fail when the CUDA provider cannot start (a CUDA or cuDNN library missing, or of another
    major than the onnxruntime-gpu build): it logs and carries on with the CPU provider alone.
    """
    if "CUDAExecutionProvider" not in providers or "CUDAExecutionProvider" in session.get_providers():
        return False
    warnings.warn("ONNX Runtime could not start its CUDA provider (its CUDA 12 / cuDNN 9 libraries did not "
                  "load: is onnxruntime-gpu a CUDA 12 build, with torch's CUDA 12 build installed?) and runs "
                  "this graph on the CPU; `python -c \"import onnxruntime as o; o.preload_dlls(verbose=True)\"` "
                  "shows what loads", stacklevel=3)
    return True


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.abs(b).max()) or 1.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) / scale


def fuse(path: str, config, role: str, cpu_only: bool = False):
    """ONNX Runtime's transformer optimizer (CLIP model type) on the graph at `path` -> (ModelProto, op counts).

    On the CPU provider alone, residual adds are not fused into SkipLayerNormalization: ONNX Runtime
    1.31's CPU kernel of it took 9.8 ms per [3200, 768] call where the LayerNormalization and Add it
    replaces took 1.2 + 1.0 ms (B/32 video graph at batch 8, ORT's profiler), 5% of the whole graph.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if family_of(config) == "evl":
        heads, width = config.heads, config.width
    else:
        heads, width = ((config.text_heads, config.text_width) if role == "text"
                        else (config.vision_heads, config.vision_width))
    options = FusionOptions("clip")
    if cpu_only:
        options.enable_skip_layer_norm = False
    # opt_level 0: only the transformer fusions here; the session applies ORT's own optimizations after
    om = optimize_model(path, model_type="clip", num_heads=heads, hidden_size=width, opt_level=0,
                        optimization_options=options)
    stats = {k: v for k, v in om.get_fused_operator_statistics().items() if v}
    return om.model, stats


def check_io_names(graph, ins: list[str], outs: list[str]) -> None:
    """A graph (GraphSession, ov_runner.OvGraph) whose input/output names are not the manifest's is
    refused: a valid ONNX file, but not the one exported here."""
    if ins != graph.expected_inputs or outs != graph.expected_outputs:
        raise ExportFolderError(
            f"{graph.path}: the {graph.role} graph has inputs {ins} and outputs {outs}; xclip-engine expects "
            f"inputs {graph.expected_inputs} and outputs {graph.expected_outputs}. The file was replaced or "
            "not made by `xclip-engine export`: re-export the folder")


class GraphSession:
    """One graph in one ONNX Runtime session, built through the fuse / check / cache steps above."""

    def __init__(self, manifest: Manifest, role: str, precision: str, device: torch.device, fusion: bool = True):
        self.role, self.precision = role, precision
        cache_dir = os.path.join(manifest.folder, CACHE_DIR)
        writable = _writable(cache_dir)      # made first, so that the hash below is recorded there too
        # the content check comes first: nothing below (the cache included) may trust an unchecked graph
        self.path, self.sha256 = manifest.verified(role, precision)
        self.folder = manifest.folder
        self.expected_inputs = list(manifest.inputs[role])
        self.expected_outputs = list(manifest.outputs[role])
        import onnxruntime as ort

        providers = available_providers(device)

        def cache_paths(providers):
            # The providers are in the key because the optimized model ORT saves is specific to them (it
            # fuses and lays out nodes for the providers the session has); the device ordinal is not: the
            # same graph serves cuda:0 and cuda:1. FUSION_RECIPE: a change to what fuse() does must not
            # serve graphs fused the old way. The hash is the verified one (its full value is in the
            # info file and checked there; the name only keeps entries of different graphs apart).
            tag = "-".join(p.replace("ExecutionProvider", "").lower() for p in providers)
            key = (f"{role}.{precision}.{self.sha256[:16]}.ort{ort.__version__}.{tag}"
                   + (f".{FUSION_RECIPE}" if fusion else ".nofusion"))
            return os.path.join(cache_dir, key + ".onnx"), os.path.join(cache_dir, key + ".json")

        cached, info_path = cache_paths(providers)
        opts = _provider_options(providers, device)
        if self._load_cached(cached, info_path, providers, opts):
            return
        if (writable and os.environ.get(_CHILD_ENV) is None
                and os.path.getsize(self.path) >= BUILD_IN_CHILD_BYTES
                and _build_in_child(manifest.folder, role, precision, device, fusion)
                and self._load_cached(cached, info_path, providers, opts)):
            return
        self.info = {"source": os.path.basename(self.path), "fused": {}, "fusion": "off"}
        graph = self.path
        try:
            plain = _session(self.path, providers, opts)
        except Exception as e:
            raise ExportFolderError(f"{self.path}: ONNX Runtime cannot load this graph ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:300]}); the file is damaged or not from "
                                    "xclip-engine export: copy the folder again or re-export it") from None
        if _warn_if_fell_back(plain, providers):
            # built and cached as what it is, a CPU graph (the CPU fusion recipe, the CPU key)
            providers, opts = ["CPUExecutionProvider"], [{}]
            cached, info_path = cache_paths(providers)
        self.session = plain
        self._check_names()
        if fusion and precision == "fp32":
            feeds = sample_feeds(manifest, self.role)
            want = plain.run(None, feeds)
            self.session = plain = None   # fusing needs the memory (a B/32 video graph's session: 0.6 GB)
            graph = self._try_fusion(manifest, feeds, want, providers, opts) or self.path
        if _writable(cache_dir):
            def build(tmp: str) -> None:
                # ONNX Runtime itself writes the optimized graph, to the temporary name
                self.session = _session(graph, providers, opts, optimized_path=tmp)

            try:
                # the graph first, its info last: an info file marks a complete cache entry;
                # the pid in the temp name keeps two processes caching at once apart
                write_via_temp(cached, build, tmp=cached + f".tmp{os.getpid()}")
                # what the entry was made from, and what was written: checked before it is served
                self.info["source_sha256"] = self.sha256
                self.info["optimized"] = {"bytes": os.path.getsize(cached),
                                          "sha256": hash_file(self.folder, os.path.relpath(cached, self.folder))}
                atomic_write(info_path, lambda f: json.dump(self.info, f, indent=1), text=True)
                return
            except Exception as e:   # a full disk or a provider that cannot save: serve, uncached
                warnings.warn(f"{cache_dir}: cannot cache the optimized graph ({type(e).__name__}: {e}); it is "
                              "rebuilt on each load", stacklevel=2)
        if graph is not self.path or self.session is None:
            self.session = _session(graph, providers, opts)

    def _load_cached(self, cached: str, info_path: str, providers, opts) -> bool:
        """Serve the cache entry when it is the one made from this very graph and is unchanged since.

        Anything else (another source hash, an altered or damaged optimized graph, an entry from
        before hashes were recorded) is rebuilt with a warning, never fatal and never served.
        """
        if not (os.path.isfile(cached) and os.path.isfile(info_path)):
            return False
        try:
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f)
            if info.get("source_sha256") != self.sha256:
                raise ValueError("made from another graph, or before source hashes were recorded")
            made = info.get("optimized") or {}
            if (os.path.getsize(cached) != made.get("bytes")
                    or hash_file(self.folder, os.path.relpath(cached, self.folder)) != made.get("sha256")):
                raise ValueError("the optimized graph changed since it was written")
            self.session = _session(cached, providers, opts, level="none")
            _warn_if_fell_back(self.session, providers)
            self.info = info
            self._check_names()
            return True
        except Exception as e:   # a stale, altered or damaged cache entry is rebuilt, never fatal
            self.session = None
            warnings.warn(f"{cached}: unusable cached graph ({type(e).__name__}: {str(e)[:200]}); rebuilding it",
                          stacklevel=3)
            return False

    def _try_fusion(self, manifest, feeds, want, providers, opts):
        try:
            fused, stats = fuse(self.path, manifest.config, self.role, cpu_only=providers == ["CPUExecutionProvider"])
            self.info["fused"] = stats
            got = _session(fused, providers, opts).run(None, feeds)
        except Exception as e:   # the optimizer is best effort: the plain graph is always correct
            self.info["fusion"] = f"failed ({type(e).__name__}: {str(e)[:200]}); plain graph used"
            return None
        err = max(_max_rel(g, w) for g, w in zip(got, want))
        self.info["fusion_max_rel_error"] = err
        if not np.isfinite(err) or err > FUSION_RTOL:
            self.info["fusion"] = f"rejected: fused graph differs by {err:.3g} relative; plain graph used"
            return None
        self.info["fusion"] = "on"
        return fused

    def _check_names(self):
        check_io_names(self, [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])

    def run(self, **feeds) -> list[np.ndarray]:
        return self.session.run(None, feeds)

    def runtime_info(self) -> dict:
        return {"providers": self.session.get_providers()}


# A first load fuses, checks and optimizes each graph. For a big graph it does that in a child
# process, which writes the cache and exits, and this process then loads the cache: the protobuf
# copies of a build stay in the heap of whichever process made them (a first load of B/32 left
# 5.5 GB resident where a cached load takes 1.4 GB). Small graphs are built here: the child's
# start (importing torch and ONNX Runtime) would cost more than it saves. A failed child is not
# fatal: the build runs here after it, and reports what is wrong with the graph itself.
BUILD_IN_CHILD_BYTES = 64 << 20
_CHILD_ENV = "XCLIP_ENGINE_ORT_BUILD_CHILD"


def _build_in_child(folder: str, role: str, precision: str, device: torch.device, fusion: bool) -> bool:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "xclip_engine.export.ort_runner", os.path.abspath(folder), role, precision,
           str(device), "1" if fusion else "0"]
    env = {**os.environ, _CHILD_ENV: "1"}
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    except OSError:
        return False
    return r.returncode == 0


def _build_main(argv) -> None:
    """The child of _build_in_child: build one graph's cache entry (GraphSession writes it) and exit."""
    from .manifest import read_manifest

    folder, role, precision, device, fusion = argv
    GraphSession(read_manifest(folder), role, precision, torch.device(device), fusion == "1")


def _writable(folder: str) -> bool:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


class OrtNet:
    """The graphs of an export folder behind the net interface of xclip_engine.engine.api.Model.

    X-CLIP: text and video graphs, `net(px, text_features)`. EVL: the video graph alone, `net(px)`
    (closed set: the logits are the class scores; `encode_text` is refused).

    The graphs are `graph_class` objects (anything with `run(**feeds) -> outputs`, `.info` and
    `runtime_info()`): GraphSession here; ov_runner.OvNet runs the same calls on OpenVINO's.
    `graph_options` go to graph_class: `fusion` for ONNX Runtime's."""

    backend = "onnxruntime"
    graph_class = GraphSession

    def __init__(self, manifest: Manifest, precision: str = "fp32", device=None, **graph_options):
        self.manifest, self.precision = manifest, precision
        self.config = manifest.config
        self.family = family_of(self.config)
        self.device = torch.device(device or "cpu")
        self.text = None
        if self.family == "xclip":
            self.text = self.graph_class(manifest, "text", precision, self.device, **graph_options)
        self.video = self.graph_class(manifest, "video", precision, self.device, **graph_options)
        self._no_text = None if self.family == "evl" else np.zeros((1, self.config.embed_dim), np.float32)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        if self.text is None:
            raise NotImplementedError("an EVL export is a closed-set classifier with no text tower: its logits are "
                                      "the scores of its classes (net(pixel_values))")
        """ids [K, C] -> [K, E]; the padding after the longest label is cut first (exact under the causal mask)."""
        if ids.ndim != 2 or ids.shape[0] == 0:
            raise ValueError(f"input_ids must be [K, {self.config.context_length}] with K >= 1, got {tuple(ids.shape)}")
        ids = ids[:, : causal_eot_trim(ids)]
        out, = self.text.run(input_ids=ids.detach().cpu().numpy().astype(np.int64))
        return torch.from_numpy(out).to(ids.device)

    def _run_video(self, pixel_values: torch.Tensor, text) -> tuple[torch.Tensor, torch.Tensor]:
        px = pixel_values.detach().cpu().numpy().astype(np.float32, copy=False)
        feeds = {"pixel_values": px} if self.family == "evl" else {"pixel_values": px, "text_features": text}
        logits, video = self.video.run(**feeds)
        return torch.from_numpy(logits).to(pixel_values.device), torch.from_numpy(video).to(pixel_values.device)

    def encode_video(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # the graph needs some text features; one zero row costs nothing next to the video tower
        return self._run_video(pixel_values, self._no_text)[1]

    def logits_and_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """EVL: (logits [B, classes], video features [B, C]) from one run of the video graph."""
        if self.family != "evl":
            raise NotImplementedError("logits_and_features is EVL's; X-CLIP's logits need text features")
        return self._run_video(pixel_values, None)

    def video_features(self, pixel_values):
        raise NotImplementedError("the exported video graph returns logits and video embeddings, not the visual "
                                  "tokens of the prompt generator; use backend='reference' for video_features")

    def __call__(self, pixel_values: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if self.family == "evl":
            if text_features is not None:
                raise TypeError("an EVL export takes pixel values only: net(pixel_values) -> class logits")
            return self._run_video(pixel_values, None)[0]
        if text_features is None:
            raise TypeError("an X-CLIP export needs text features: net(pixel_values, text_features)")
        text = text_features.detach().float().cpu().numpy()
        return self._run_video(pixel_values, text)[0]

    def describe(self) -> dict:
        """The backend, the precision, what runs the graphs (ORT's providers, OpenVINO's device and
        version) and each graph's info."""
        info = {"backend": self.backend, "precision": self.precision, **self.video.runtime_info(),
                "video": self.video.info}
        if self.text is not None:
            info["text"] = self.text.info
        return info


if __name__ == "__main__":
    import sys

    _build_main(sys.argv[1:])
