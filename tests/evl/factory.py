"""EVL test material written from the official layouts, not from our model:

- `random_official(...)`: a CLIP image tower in OpenAI's names (`visual.*`) and an EVL decoder + head in
  the official repository's names (`decoder.*`, `proj.*`), random;
- `ClipRoot` / `ClipVisual`: a module with OpenAI's CLIP attribute names (nn.MultiheadAttention's
  in_proj, mlp.c_fc/c_proj), whose forward is a plain CLIP tower, to save as a TorchScript archive;
- `reference_logits(...)`: EVL's math (docs/model-evl.md §3-§9) restated loop by loop, straight from
  those official-name dicts, in float64: the independent answer the model is tested against;
- writers for the files a user has: the official .pth, OpenAI's archive, its plain state dict,
  open_clip's checkpoint, a .safetensors, a transformers CLIPVisionModel folder.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn


def random_official(width=64, layers=2, patch=8, grid=4, frames=4, decoder_layers=2, classes=5, seed=0):
    """(visual, decoder): float32 state dicts in OpenAI's CLIP and the official EVL names."""
    g = torch.Generator().manual_seed(seed)
    c = width

    def rnd(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    def lin(prefix, out_f, in_f, sd):
        sd[f"{prefix}.weight"] = rnd(out_f, in_f, std=in_f ** -0.5)
        sd[f"{prefix}.bias"] = rnd(out_f, std=0.1)

    def ln(prefix, sd):
        sd[f"{prefix}.weight"] = 1 + rnd(c, std=0.1)
        sd[f"{prefix}.bias"] = rnd(c, std=0.1)

    v = {"visual.conv1.weight": rnd(c, 3, patch, patch, std=(3 * patch * patch) ** -0.5),
         "visual.class_embedding": rnd(c, std=0.5), "visual.positional_embedding": rnd(grid * grid + 1, c, std=0.5),
         "visual.proj": rnd(c, 16, std=0.1)}
    ln("visual.ln_pre", v)
    ln("visual.ln_post", v)
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}"
        ln(f"{b}.ln_1", v)
        ln(f"{b}.ln_2", v)
        lin(f"{b}.attn.in_proj", 3 * c, c, v)
        v[f"{b}.attn.in_proj_weight"] = v.pop(f"{b}.attn.in_proj.weight")
        v[f"{b}.attn.in_proj_bias"] = v.pop(f"{b}.attn.in_proj.bias")
        lin(f"{b}.attn.out_proj", c, c, v)
        lin(f"{b}.mlp.c_fc", 4 * c, c, v)
        lin(f"{b}.mlp.c_proj", c, 4 * c, v)
    d = {"decoder.cls_token": rnd(c, std=0.5)}
    for i in range(decoder_layers):
        d[f"decoder.temporal_conv.{i}.weight"] = rnd(c, 1, 3, std=0.3)
        d[f"decoder.temporal_conv.{i}.bias"] = rnd(c, std=0.1)
        d[f"decoder.temporal_pos_embed.{i}"] = rnd(frames, c, std=0.1)
        d[f"decoder.cross_attention.{i}.w1"] = rnd((2 * grid - 1) ** 2, c)
        d[f"decoder.cross_attention.{i}.w2"] = rnd((2 * grid - 1) ** 2, c)
        layer = f"decoder.decoder_layers.{i}"
        for n in ("norm1", "norm2", "norm3"):
            ln(f"{layer}.{n}", d)
        for p in ("q", "k", "v", "out"):
            lin(f"{layer}.attn.{p}_proj", c, c, d)
        lin(f"{layer}.mlp.fc1", 4 * c, c, d)
        lin(f"{layer}.mlp.fc2", c, 4 * c, d)
    ln("proj.0", d)
    lin("proj.2", classes, c, d)
    return v, d


# ---- the loop-by-loop statement of EVL's math (float64) -------------------------------------------
def _ln(x, sd, prefix, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[f"{prefix}.weight"] + sd[f"{prefix}.bias"]


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _attend(q, k, v, heads):
    """Explicit multi-head attention, head by head: q [Lq, C], k/v [Lk, C] -> [Lq, C]."""
    dh = q.shape[-1] // heads
    out = []
    for h in range(heads):
        s = slice(h * dh, (h + 1) * dh)
        a = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(dh), dim=-1)
        out.append(a @ v[:, s])
    return torch.cat(out, dim=-1)


def reference_frame(frame, v, heads, taps):
    """One frame [3, S, S] through a plain CLIP tower in OpenAI's names -> the last `taps` blocks'
    (out [L, C], q [L, C], k [L, C]); q, k projected with bias, not scaled."""
    w = v["visual.conv1.weight"]
    c, _, p, _ = w.shape
    g = frame.shape[-1] // p
    patches = []
    for r in range(g):              # patch embedding, patch by patch (row-major)
        for cc in range(g):
            patch = frame[:, r * p:(r + 1) * p, cc * p:(cc + 1) * p]
            patches.append((w * patch).sum(dim=(1, 2, 3)))
    x = torch.stack([v["visual.class_embedding"], *patches]) + v["visual.positional_embedding"]
    x = _ln(x, v, "visual.ln_pre")
    n = len({k.split(".")[3] for k in v if k.startswith("visual.transformer.resblocks.")})
    out = []
    for i in range(n):
        b = f"visual.transformer.resblocks.{i}"
        h = _ln(x, v, f"{b}.ln_1")
        qkv = h @ v[f"{b}.attn.in_proj_weight"].T + v[f"{b}.attn.in_proj_bias"]
        q, k, val = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
        x = x + _attend(q, k, val, heads) @ v[f"{b}.attn.out_proj.weight"].T + v[f"{b}.attn.out_proj.bias"]
        h = _quick_gelu(_ln(x, v, f"{b}.ln_2") @ v[f"{b}.mlp.c_fc.weight"].T + v[f"{b}.mlp.c_fc.bias"])
        x = x + h @ v[f"{b}.mlp.c_proj.weight"].T + v[f"{b}.mlp.c_proj.bias"]
        if i >= n - taps:
            out.append((x, q, k))
    return out


def reference_adjacent(q, k, w1, w2, grid, heads):
    """§7 loop by loop: q, k [T, L, C] of one video -> [T, L, C]; frames, query patches and heads looped."""
    t_len, seq, c = q.shape
    dh = c // heads
    out = torch.zeros(t_len, seq, w1.shape[1], dtype=q.dtype)
    rows = torch.arange(grid * grid) // grid
    cols = torch.arange(grid * grid) % grid
    for t in range(t_len):
        for other, w in ((t - 1, w1), (t + 1, w2)):
            if not 0 <= other < t_len:
                continue                           # no neighbour there: contributes 0
            for p in range(grid * grid):           # query patch p (token p + 1)
                a = torch.zeros(grid * grid, dtype=q.dtype)
                for h in range(heads):
                    s = slice(h * dh, (h + 1) * dh)
                    scores = k[other, 1:, s] @ q[t, 1 + p, s] / math.sqrt(dh)
                    a += torch.softmax(scores, dim=0) / heads
                r, cc = p // grid, p % grid
                idx = (r - rows + grid - 1) * (2 * grid - 1) + (cc - cols + grid - 1)
                out[t, 1 + p] += (a[:, None] * w[idx]).sum(dim=0)
    return out


def reference_logits(v, d, video, heads=None):
    """EVL's logits [B, classes] from official-name dicts and pixels [B, T, 3, S, S], in float64."""
    v = {k: t.double() for k, t in v.items()}
    d = {k: t.double() for k, t in d.items()}
    video = video.double()
    c = d["decoder.cls_token"].shape[0]
    heads = heads or c // 64
    k_layers = len({k.split(".")[2] for k in d if k.startswith("decoder.decoder_layers.")})
    grid = round((v["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    logits = []
    for clip in video:
        t_len = clip.shape[0]
        per_frame = [reference_frame(f, v, heads, k_layers) for f in clip]
        x = d["decoder.cls_token"][None]                                       # [1, C]
        for i in range(k_layers):
            X = torch.stack([per_frame[t][i][0] for t in range(t_len)])       # [T, L, C]
            q = torch.stack([per_frame[t][i][1] for t in range(t_len)])
            k = torch.stack([per_frame[t][i][2] for t in range(t_len)])
            w, b = d[f"decoder.temporal_conv.{i}.weight"], d[f"decoder.temporal_conv.{i}.bias"]
            conv = torch.zeros_like(X)
            for t in range(t_len):                # depthwise conv along T, kernel 3, zero padding
                conv[t] += b
                for j in (-1, 0, 1):
                    if 0 <= t + j < t_len:
                        conv[t] += w[:, 0, j + 1] * X[t + j]
            pos = d[f"decoder.temporal_pos_embed.{i}"][:, None, :]
            feat = reference_adjacent(q, k, d[f"decoder.cross_attention.{i}.w1"],
                                      d[f"decoder.cross_attention.{i}.w2"], grid, heads)
            Y = (X + conv + pos + feat).reshape(-1, c)
            L = f"decoder.decoder_layers.{i}"
            kv = _ln(Y, d, f"{L}.norm3")
            qx = _ln(x, d, f"{L}.norm1")

            def proj(z, name, L=L):
                return z @ d[f"{L}.attn.{name}_proj.weight"].T + d[f"{L}.attn.{name}_proj.bias"]

            x = x + proj(_attend(proj(qx, "q"), proj(kv, "k"), proj(kv, "v"), c // 64), "out")
            h = _quick_gelu(_ln(x, d, f"{L}.norm2") @ d[f"{L}.mlp.fc1.weight"].T + d[f"{L}.mlp.fc1.bias"])
            x = x + h @ d[f"{L}.mlp.fc2.weight"].T + d[f"{L}.mlp.fc2.bias"]
        logits.append(_ln(x[0], d, "proj.0") @ d["proj.2.weight"].T + d["proj.2.bias"])
    return torch.stack(logits)


# ---- OpenAI's CLIP as a module (for the TorchScript archive) --------------------------------------
class _Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x):   # x [L, N, C], as OpenAI's CLIP
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))


class _Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])


class ClipVisual(nn.Module):
    """OpenAI's VisionTransformer attribute names; forward -> every block's output [N, L, C]."""

    def __init__(self, width=64, layers=2, patch=8, grid=4):
        super().__init__()
        heads = max(1, width // 64)
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, 16))

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding).transpose(0, 1)
        outs = []
        for block in self.transformer.resblocks:
            x = block(x)
            outs.append(x.transpose(0, 1))
        return torch.stack(outs)


class ClipRoot(nn.Module):
    """What OpenAI's archive holds at its root: `visual` and a text tower (here one table), unused by EVL."""

    def __init__(self, **kw):
        super().__init__()
        self.visual = ClipVisual(**kw)
        self.token_embedding = nn.Embedding(10, 8)
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x):
        return self.visual(x)


def clip_root(visual_sd: dict, width, layers, patch, grid) -> ClipRoot:
    m = ClipRoot(width=width, layers=layers, patch=patch, grid=grid)
    own = m.state_dict()
    own.update(visual_sd)
    m.load_state_dict(own)
    return m.eval()


def write_torchscript(path, visual_sd, width, layers, patch, grid, half=True):
    """OpenAI's release format: a traced module saved with torch.jit.save (fp16, as released)."""
    m = clip_root(visual_sd, width, layers, patch, grid)
    example = torch.zeros(1, 3, patch * grid, patch * grid)
    with warnings.catch_warnings():   # tracing nn.MultiheadAttention and jit.save's deprecation: noise here
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, example)
        if half:
            traced = traced.half()
        torch.jit.save(traced, str(path))
    return path


def write_official_pth(path, decoder_sd, prefix="module.", wrap=True):
    sd = {prefix + k: v for k, v in decoder_sd.items()}
    obj = {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "next_step": 100} if wrap else sd
    torch.save(obj, str(path))
    return path


def write_transformers(folder, visual_sd, width, layers, patch, grid):
    """The same tower as transformers' CLIPVisionModel (its own classes), weights mapped by hand."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=max(1, width // 64), image_size=patch * grid, patch_size=patch,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5)
    m = CLIPVisionModel(cfg).eval()
    v = visual_sd
    sd = {"embeddings.class_embedding": v["visual.class_embedding"],
          "embeddings.patch_embedding.weight": v["visual.conv1.weight"],
          "embeddings.position_embedding.weight": v["visual.positional_embedding"]}
    for ours, theirs in (("pre_layrnorm", "visual.ln_pre"), ("post_layernorm", "visual.ln_post")):
        sd[f"{ours}.weight"], sd[f"{ours}.bias"] = v[f"{theirs}.weight"], v[f"{theirs}.bias"]
    for i in range(layers):
        b, h = f"visual.transformer.resblocks.{i}", f"encoder.layers.{i}"
        for j, p in enumerate("qkv"):
            sd[f"{h}.self_attn.{p}_proj.weight"] = v[f"{b}.attn.in_proj_weight"][j * width:(j + 1) * width]
            sd[f"{h}.self_attn.{p}_proj.bias"] = v[f"{b}.attn.in_proj_bias"][j * width:(j + 1) * width]
        pairs = (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                 ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))
        for hf, oa in pairs:
            for s in ("weight", "bias"):
                sd[f"{h}.{hf}.{s}"] = v[f"{b}.{oa}.{s}"]
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in m.state_dict()) else ""
    missing, unexpected = m.load_state_dict({prefix + k: t for k, t in sd.items()}, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    m.save_pretrained(str(folder))
    return m
