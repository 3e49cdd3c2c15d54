"""EVL B/16 against the official model: the same random weights, logits and speed in one run.

    python benchmarks/bench_evl.py --official PATH [--batch 8] [--repeats 3] [--paths fp32 bf16]

PATH is a checkout of OpenGVLab/efficient-video-recognition (it states no license, so nothing of
it is vendored here; the benchmark imports it from where you put it). The official model allocates
one tensor on CUDA inside its forward; for a CPU run this script gives that module a stand-in
`torch` whose `zeros` drops a CUDA device argument (nothing else of the official code changes).

What it does, in one process:
1. builds the official EVLTransformer (ViT-B/16, 8 frames, 400 classes) with random weights in the
   official layout: a random CLIP backbone in OpenAI's `visual.*` names (fed through the official
   weight loader) and a random decoder and head, temporal terms included;
2. writes the two files a user has (the EVL .pth and the backbone) and loads them with
   `xe.load(pth, backbone=...)`: the real loader, not a private mapping;
3. compares logits (relative to the largest logit) against each other and against our model in
   float64; top-1 agreement;
4. times, interleaved, the official forward (fp32, and its fp16-backbone mode where it runs) and
   ours (reference fp32, reference bf16, and an export folder with --export) at the batch size;
   best of `--repeats`; prints the ratios against the official fp32 forward.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import matmul_gflops  # noqa: E402

WIDTH, LAYERS, PATCH, SIZE = 768, 12, 16, 224


def random_openai_visual(gen: torch.Generator) -> dict:
    """A random CLIP ViT-B/16 image tower in OpenAI's state-dict names (`visual.` stripped)."""
    w, g = WIDTH, SIZE // PATCH
    s = w ** -0.5

    def rnd(*shape, std=1.0, mean=0.0):
        return mean + std * torch.randn(*shape, generator=gen)

    sd = {"class_embedding": rnd(w, std=s), "positional_embedding": rnd(g * g + 1, w, std=s),
          "conv1.weight": rnd(w, 3, PATCH, PATCH, std=0.02), "ln_pre.weight": rnd(w, std=0.1, mean=1.0),
          "ln_pre.bias": rnd(w, std=0.1), "ln_post.weight": torch.ones(w), "ln_post.bias": torch.zeros(w),
          "proj": rnd(w, 512, std=s)}
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        sd.update({
            p + "ln_1.weight": rnd(w, std=0.1, mean=1.0), p + "ln_1.bias": rnd(w, std=0.1),
            p + "attn.in_proj_weight": rnd(3 * w, w, std=s), p + "attn.in_proj_bias": rnd(3 * w, std=0.02),
            p + "attn.out_proj.weight": rnd(w, w, std=s), p + "attn.out_proj.bias": rnd(w, std=0.02),
            p + "ln_2.weight": rnd(w, std=0.1, mean=1.0), p + "ln_2.bias": rnd(w, std=0.1),
            p + "mlp.c_fc.weight": rnd(4 * w, w, std=s), p + "mlp.c_fc.bias": rnd(4 * w, std=0.02),
            p + "mlp.c_proj.weight": rnd(w, 4 * w, std=(4 * w) ** -0.5), p + "mlp.c_proj.bias": rnd(w, std=0.02)})
    return sd


def import_official(path: str):
    """The official model module, with the stand-in `torch` for its one CUDA allocation."""
    if not os.path.isfile(os.path.join(path, "model.py")):
        raise SystemExit(f"--official {path}: no model.py there; pass a checkout of "
                         "OpenGVLab/efficient-video-recognition")
    sys.path.insert(0, path)
    import model as official  # the official model.py

    real = torch

    def zeros(*args, device=None, **kwargs):   # the forward's one `device='cuda'` allocation
        return real.zeros(*args, device=None if device == "cuda" else device, **kwargs)

    shim = types.ModuleType("torch_cpu_shim")
    shim.__dict__.update({k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    shim.zeros = zeros
    official.torch = shim
    return official


def build_official(official, visual: dict, mode: str, frames: int, gen: torch.Generator):
    """The official EVLTransformer with `visual` as its backbone (through its own weight loader)."""
    class Archive:   # what its loader reads: torch.jit.load(path).visual.state_dict()
        class visual:
            @staticmethod
            def state_dict():
                return dict(visual)

    jit_load = torch.jit.load
    torch.jit.load = lambda *a, **k: Archive
    try:
        net = official.EVLTransformer(num_frames=frames, backbone_name="ViT-B/16-lnpre", backbone_type="clip",
                                      backbone_path="random", backbone_mode=mode, num_classes=400)
    finally:
        torch.jit.load = jit_load
    return net.eval()


@torch.no_grad()
def randomize_decoder(net, gen: torch.Generator):
    """Random decoder and head weights; the temporal terms (zeros at init) get values too."""
    for name, p in net.named_parameters():
        if "norm" in name or name.startswith("proj.0"):
            p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if p.ndim < 2 else p.shape[-1] ** -0.5))


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="a checkout of OpenGVLab/efficient-video-recognition")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--paths", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="our reference backend's precisions to time")
    p.add_argument("--export", default=None, help="also time this EVL export folder on ONNX Runtime")
    p.add_argument("--no-fp16", action="store_true", help="skip the official fp16-backbone mode")
    args = p.parse_args(argv)

    import xclip_engine as xe

    official = import_official(args.official)
    gen = torch.Generator().manual_seed(0)
    visual = random_openai_visual(gen)
    off = build_official(official, visual, "freeze_fp32", args.frames, gen)
    randomize_decoder(off, gen)

    with tempfile.TemporaryDirectory() as d:
        pth, backbone = os.path.join(d, "k400_vitb16_8f_dec4x768.pth"), os.path.join(d, "ViT-B-16-visual.pt")
        torch.save({"model": {"module." + k: v for k, v in off.state_dict().items()}}, pth)
        torch.save({"visual." + k: v for k, v in visual.items()}, backbone)
        ours = {prec: xe.load(pth, backbone=backbone, precision=prec, device="cpu") for prec in args.paths}
        exact_net = xe.load(pth, backbone=backbone, device="cpu").net.double()
    if args.export:
        ours["onnxruntime"] = xe.load(args.export, backend="onnxruntime", device="cpu")

    x = torch.randn(args.batch, 3, args.frames, SIZE, SIZE, generator=gen)   # the official layout
    ours_x = x.permute(0, 2, 1, 3, 4).contiguous()                             # ours: [B, T, 3, S, S]
    with torch.no_grad():
        exact = exact_net(ours_x.double()).float()
        scale = exact.abs().max()
        ref = off(x)
        print(f"logits relative to the largest ({scale:.3f}), batch {args.batch}:")
        print(f"  official fp32 vs float64 (ours): {((ref - exact).abs().max() / scale):.2e}")
        outputs = {name: m.logits(ours_x) for name, m in ours.items()}
        for name, out in outputs.items():
            print(f"  ours {name:11s} vs official fp32: {((out - ref).abs().max() / scale):.2e}, vs float64: "
                  f"{((out - exact).abs().max() / scale):.2e}, top-1 agrees with official on "
                  f"{int((out.argmax(1) == ref.argmax(1)).sum())}/{args.batch}")
    del exact_net

    runs = {"official fp32": lambda: off(x)}
    if not args.no_fp16:
        try:
            off16 = build_official(official, visual, "freeze_fp16", args.frames, gen)
            off16.load_state_dict(off.state_dict())
            with torch.no_grad():
                off16(x[:1])
            runs["official fp16 backbone"] = lambda: off16(x)
        except Exception as e:   # fp16 Linear layers may not run on this CPU build
            print(f"official fp16-backbone mode does not run here: {type(e).__name__}: {e}")
    for name, m in ours.items():
        runs[f"ours {name}"] = (lambda m=m: m.logits(ours_x))
    times = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():   # warm-up
            fn()
        for _ in range(args.repeats):   # interleaved, so that a slow spell of the machine hits all alike
            for name, fn in runs.items():
                times[name].append(best_time(fn, 1))
    print(f"\nCPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; matmul fp32 "
          f"{matmul_gflops():.0f} GFLOP/s, bf16 {matmul_gflops(dtype=torch.bfloat16):.0f} GFLOP/s")
    base = min(times["official fp32"])
    print(f"B/16, {args.frames} frames, batch {args.batch}, best of {args.repeats}:")
    for name, ts in times.items():
        t = min(ts)
        print(f"  {name:24s} {t:7.2f} s  {args.batch / t:6.2f} videos/s  {base / t:5.2f}x official fp32")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
