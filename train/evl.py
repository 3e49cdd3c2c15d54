"""EVL in the reference trainer: its backbone from another model, its input in training, bf16 backbone.

EVL (docs/model-evl.md) is a frozen CLIP image transformer with a trained decoder and head. The
trainer builds the EVL model of the run config, fills its backbone from `model.backbone` and
trains everything else (decoder, temporal modules, head) with cross-entropy on the class logits.

- **Backbone source.** A CLIP image tower file (OpenAI's ViT-B-16.pt, a transformers CLIP folder,
  an OpenAI-layout or open_clip state dict: engine/checkpoint/backbone_formats.py reads them), or
  any checkpoint `load_model` reads: an X-CLIP (its vision tower without the
  message tokens: `visual.{conv1, class_embedding, positional_embedding, ln_pre,
  blocks.{i}.{ln_1, attn, ln_2, mlp}}` are CLIP's image transformer and map 1:1 onto EVL's
  `backbone.*`; `message_*`, `ln_post` and `proj` are left out) or another EVL (its `backbone.*`).
  `model.backbone: default` is the bundled X-CLIP demo (engine/assets/default_model).
  Every size is checked against the run's EVL config first, and a mismatch names the
  `model.config.*` field to change.
- **Input statistics.** An X-CLIP backbone was trained on ImageNet mean/std over 0..255, EVL feeds
  CLIP mean/std over 0..1 (docs/preprocessing.md §8, §10). The map between the two is
  per-channel affine, u = a * v + b, so it folds exactly into the backbone: conv1's input channel c
  scaled by a_c, and conv1 applied to the constant image b (the same vector for every patch)
  added to the patch rows of the positional embedding (`model.backbone_fold_norm`, on by
  default). The backbone then sees the numbers it was trained on from EVL's own preprocessing.
- **Training clips.** Test time is EVL's preprocessing (engine.video: stride sampling, short side
  to S, centre crop, 0..1 and CLIP mean/std). Training draws the clip's start uniformly from every
  start the stride allows (the test clip is the centred one) and applies the trainer's light
  spatial augmentation (multi-scale crop, colour jitter, grayscale, flip as `data.*` say), then the
  same normalisation.
- **bf16 backbone** (`train.backbone_bf16`): the frozen backbone runs under bf16 autocast, its
  taps handed to the decoder in fp32; master weights stay fp32, so the saved model is unchanged.
"""

from __future__ import annotations

import contextlib
import re

import cv2
import numpy as np
import torch

from xclip_engine.engine.config import CLIP_MEAN, CLIP_STD, IMAGE_MEAN, IMAGE_STD, EVLConfig

from .config import ConfigError

# X-CLIP vision-tower key -> EVL backbone key; anything else of the vision tower is not CLIP's ViT
_XCLIP_TO_EVL = [
    (re.compile(r"^visual\.(conv1\.weight|class_embedding|positional_embedding|ln_pre\.(weight|bias))$"),
     r"backbone.\1"),
    (re.compile(r"^visual\.blocks\.(\d+)\.((ln_1|ln_2)\.(weight|bias)|attn\.(qkv|out)\.(weight|bias)"
                r"|mlp\.(fc1|fc2)\.(weight|bias))$"), r"backbone.blocks.\1.\2"),
]


def evl_spec(config: EVLConfig, views: str | None = None) -> dict:
    """The EVL test-time preprocessing spec of `config` (engine.video.preprocessing)."""
    from xclip_engine.engine.config import evl_preprocessing as model_spec
    from xclip_engine.engine.video.preprocessing import evl_preprocessing

    if views is None:   # the model's own spec, as xe.load gives it (default views "3x1")
        return model_spec(config)
    return evl_preprocessing(config.num_frames, config.frame_stride, config.image_size, views)


# ---- backbone -------------------------------------------------------------------------------------
def backbone_state(source_model, origin: str) -> tuple[dict, dict]:
    """(EVL `backbone.*` tensors, facts about the source) from a loaded X-CLIP or EVL model."""
    family = getattr(source_model.config, "family", "xclip")
    sd = source_model.state_dict()
    if family == "evl":
        out = {k: v for k, v in sd.items() if k.startswith("backbone.")}
        c = source_model.config
        return out, {"family": "evl", "heads": c.heads, "input": "evl"}
    out = {}
    for key, value in sd.items():
        for pattern, repl in _XCLIP_TO_EVL:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
    if not out:
        raise ConfigError(f"model.backbone = {origin!r}: no CLIP vision tower in it (no visual.* weights)")
    return out, {"family": "xclip", "heads": source_model.config.vision_heads, "input": "xclip"}


def check_backbone(config: EVLConfig, tensors: dict, facts: dict, origin: str) -> None:
    """Every size of the backbone weights against the run's EVL config; the error names the field."""
    def shape(key):
        if key not in tensors:
            raise ConfigError(f"model.backbone = {origin!r}: has no {key} (not a CLIP ViT backbone?)")
        return tuple(tensors[key].shape)

    width, _, patch, _ = shape("backbone.conv1.weight")
    checks = [("width", width, config.width), ("patch_size", patch, config.patch_size)]
    layers = len({k.split(".")[2] for k in tensors if k.startswith("backbone.blocks.")})
    checks.append(("layers", layers, config.layers))
    for field, theirs, ours in checks:
        if theirs != ours:
            raise ConfigError(f"model.config.{field} = {ours}, but the backbone in model.backbone = {origin!r} "
                              f"has {field} {theirs}; set model.config.{field}: {theirs}")
    tokens = shape("backbone.positional_embedding")[0]
    if tokens != config.num_patches + 1:
        raise ConfigError(f"model.config.image_size = {config.image_size}: with patch {config.patch_size} that is "
                          f"{config.num_patches + 1} tokens per frame, but the backbone in model.backbone = "
                          f"{origin!r} has a positional embedding for {tokens}; set model.config.image_size to "
                          f"{round((tokens - 1) ** 0.5) * config.patch_size}")
    if facts.get("heads") is not None and facts["heads"] != config.heads:
        raise ConfigError(f"model.config.heads = {config.heads}, but the backbone in model.backbone = {origin!r} "
                          f"has {facts['heads']} attention heads; set model.config.heads: {facts['heads']}")


@torch.no_grad()
def fold_xclip_normalisation(tensors: dict) -> dict:
    """Backbone weights trained on X-CLIP input (ImageNet mean/std, 0..255) -> weights that give the
    same tokens from EVL input (CLIP mean/std, 0..1). See the module docstring."""
    w = tensors["backbone.conv1.weight"].float()                                     # [C, 3, p, p]
    mean_x = torch.tensor(IMAGE_MEAN, dtype=torch.float64) / 255
    std_x = torch.tensor(IMAGE_STD, dtype=torch.float64) / 255
    mean_c, std_c = torch.tensor(CLIP_MEAN, dtype=torch.float64), torch.tensor(CLIP_STD, dtype=torch.float64)
    a = std_c / std_x                                # u = a * v + b per channel
    b = (mean_c - mean_x) / std_x
    out = dict(tensors)
    out["backbone.conv1.weight"] = (w.double() * a[None, :, None, None]).to(w.dtype)
    shift = (w.double() * b[None, :, None, None]).sum(dim=(1, 2, 3))                 # conv1 of the constant image
    pos = tensors["backbone.positional_embedding"].float().clone()
    pos[1:] += shift.to(pos.dtype)
    out["backbone.positional_embedding"] = pos
    return out


def clip_backbone_state(model, source: str) -> tuple[dict, dict]:
    """EVL `backbone.*` tensors from a CLIP image tower file (OpenAI's .pt, a transformers CLIP
    folder, an OpenAI-layout / open_clip state dict), read by the engine's backbone reader."""
    from xclip_engine.engine.checkpoint.backbone_formats import read_backbone
    from xclip_engine.engine.checkpoint.convert import convert_state_dict

    bb = read_backbone(source)
    c = model.config
    for field, theirs in (("width", bb.width), ("layers", bb.layers), ("patch_size", bb.patch),
                          ("image_size", bb.image_size)):
        if getattr(c, field) != theirs:
            raise ConfigError(f"model.config.{field} = {getattr(c, field)}, but the CLIP backbone in model.backbone = "
                              f"{source!r} has {field} {theirs}; set model.config.{field}: {theirs}")
    ours = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    tensors = convert_state_dict(bb.tensors, ours, bb.table, bb.drop, f"{source} (the backbone)")
    return tensors, {"family": bb.kind, "heads": bb.heads, "input": "evl"}


def load_backbone(model, source: str, fold_norm: bool = True, log=None) -> dict:
    """Fill `model.backbone` (an EVL) from the checkpoint `source`; returns what was done."""
    from xclip_engine.engine.checkpoint import CheckpointError, load_model

    if source == "default":   # the bundled demonstration X-CLIP (README "The bundled model")
        from xclip_engine.engine.api import default_model_path

        source = default_model_path()
    try:
        loaded = load_model(source)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        # not a whole model load_model reads: a CLIP image tower file (OpenAI's, transformers', open_clip's)?
        try:
            tensors, facts = clip_backbone_state(model, source)
        except (CheckpointError, FileNotFoundError) as e2:
            raise ConfigError(f"model.backbone = {source!r}: neither a model xclip-engine reads ({e}) nor a CLIP "
                              f"image tower ({e2})") from None
    else:
        tensors, facts = backbone_state(loaded.model, source)
        del loaded
    check_backbone(model.config, tensors, facts, source)
    folded = fold_norm and facts["input"] == "xclip"
    if folded:
        tensors = fold_xclip_normalisation(tensors)
    own = model.state_dict()
    wanted = sorted(k for k in own if k.startswith("backbone."))
    missing = [k for k in wanted if k not in tensors]
    if missing:
        raise ConfigError(f"model.backbone = {source!r}: lacks {len(missing)} backbone tensors, e.g. {missing[0]}")
    for k in wanted:
        if tuple(tensors[k].shape) != tuple(own[k].shape):
            raise ConfigError(f"model.backbone = {source!r}: {k} is {tuple(tensors[k].shape)}, the model's "
                              f"{tuple(own[k].shape)}; check model.config")
    model.load_state_dict({k: tensors[k].to(own[k].dtype) for k in wanted}, strict=False)
    info = {"backbone": source, "backbone_family": facts["family"], "backbone_norm_folded": folded,
            "backbone_tensors": len(wanted)}
    if log is not None:
        log(f"backbone: {len(wanted)} tensors from {source} ({facts['family']} vision tower)"
            + ("; its ImageNet 0..255 input statistics folded into conv1 / positional embedding" if folded else ""))
    return info


def freeze_backbone(model) -> int:
    """No gradients for the backbone (EVL already runs it without autograd); returns how many froze."""
    model.freeze_backbone = True
    n = 0
    for p in model.backbone.parameters():
        p.requires_grad_(False)
        n += p.numel()
    return n


def backbone_in_bf16(model, enabled: bool = True) -> None:
    """Run `model.backbone` under CPU/GPU bf16 autocast, taps back to fp32 for the decoder. An
    instance-level forward: the state dict (and so every saved file) is unchanged."""
    backbone = model.backbone
    if "forward" in vars(backbone):          # undo an earlier wrap
        del backbone.forward
    if not enabled:
        return
    inner = backbone.forward

    def forward(frames, taps):
        device = frames.device.type
        ctx = torch.autocast(device, dtype=torch.bfloat16) if device in ("cpu", "cuda") else contextlib.nullcontext()
        with ctx:
            out = inner(frames, taps)
        return [(x.float(), q.float(), k.float()) for x, q, k in out]

    backbone.forward = forward


# ---- training clips -------------------------------------------------------------------------------
def train_start(num_video_frames: int, num_frames: int, stride: int, rng) -> list[int]:
    """A training clip: the stride's frames from a start drawn uniformly over every start the test
    rule could slide over (a video shorter than the span pads with its last frame, as at test)."""
    span = (num_frames - 1) * stride + 1
    slide = max(num_video_frames, span) - span
    start = int(rng.integers(slide + 1))
    return [min(start + i * stride, num_video_frames - 1) for i in range(num_frames)]


_MEAN = np.asarray(CLIP_MEAN, dtype=np.float32)
_STD = np.asarray(CLIP_STD, dtype=np.float32)


def evl_train_transform(frames: list[np.ndarray], size: int, aug, rng) -> np.ndarray:
    """Decoded RGB frames of one clip -> [T, 3, S, S] float32 EVL input, augmented as `aug` (a
    DataSection) says: short side to S (the test resize), a multi-scale crop of it resized to S,
    flip, colour jitter, grayscale (one draw per clip), then 0..1 and CLIP mean/std."""
    from .data import augment_clip

    def short_to(f):   # EVL's test resize (floor of the long side), docs/preprocessing.md §8
        h, w = f.shape[:2]
        if min(h, w) == size:
            return f
        nw, nh = (w * size // h, size) if h < w else (size, h * size // w)
        return cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR)

    clip = augment_clip([short_to(np.asarray(f)) for f in frames], size, aug, rng)
    x = (clip.astype(np.float32) / 255.0 - _MEAN) / _STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# ---- cached backbone taps (train.cache_taps) --------------------------------------------------------
# The backbone is frozen, so a clip's taps (out, q, k of the last K blocks) do not change while the
# decoder trains: computed once per clip, an epoch costs the decoder and head only. A clip is then
# its test-time clip (centred stride sample, no augmentation): the price of the cache.
def compute_taps(model, pixels: torch.Tensor, dtype=torch.float16) -> torch.Tensor:
    """pixels [B, T, 3, S, S] -> the backbone's taps [B, K, 3 (out, q, k), T, L, C] in `dtype`."""
    b, t = pixels.shape[:2]
    with torch.no_grad():
        taps = model.backbone(pixels.flatten(0, 1), model.config.decoder_layers)
    parts = [torch.stack([x, q.flatten(-2), k.flatten(-2)]) for x, q, k in taps]     # K x [3, BT, L, C]
    out = torch.stack(parts)                                                          # [K, 3, BT, L, C]
    return out.view(*out.shape[:2], b, t, *out.shape[-2:]).permute(2, 0, 1, 3, 4, 5).to(dtype).contiguous()


def logits_from_taps(model, taps: torch.Tensor) -> torch.Tensor:
    """EVL's forward after the backbone (EVL.encode_video, then the head) from compute_taps' output."""
    taps = taps.float()
    b, _, _, t, seq, c = taps.shape
    h = model.config.heads
    x = model.cls_token.to(taps.dtype).expand(b, 1, -1)
    for i, (temporal, layer) in enumerate(zip(model.temporal, model.decoder)):
        out, q, k = taps[:, i, 0], taps[:, i, 1], taps[:, i, 2]
        y = temporal(out, q.view(b, t, seq, h, c // h), k.view(b, t, seq, h, c // h))
        x = layer(x, y.reshape(b, t * seq, c))
    return model.logits_from_features(x[:, 0])


class TapCache(torch.utils.data.Dataset):
    """Every clip's taps of `samples`, computed once with the model's frozen backbone; items look
    like ClipDataset's ({"pixels": taps, "label", "index", "error"}), keys (epoch, index) or index."""

    def __init__(self, model, samples, spec: dict, batch_size: int = 16, workers: int = 0, log=None):
        from torch.utils.data import DataLoader

        from .data import ClipDataset, collate

        c = model.config
        self.samples = samples
        self.taps = None
        self.errors: dict[int, str] = {}
        loader = DataLoader(ClipDataset(samples, c.num_frames, c.image_size, train=False, views="1x1",
                                        preprocessing=spec), batch_size=batch_size, num_workers=workers,
                            collate_fn=collate)
        device = next(model.parameters()).device
        for batch in loader:
            for index, err in batch["failed"]:
                self.errors[index] = err
            if batch["pixels"] is None:
                continue
            taps = compute_taps(model, batch["pixels"][:, 0].to(device)).cpu()
            if self.taps is None:
                self.taps = torch.zeros(len(samples), *taps.shape[1:], dtype=taps.dtype)
            self.taps[batch["indices"]] = taps
        if self.taps is None:
            raise ValueError("no clip of the list could be read to cache its backbone taps")

    @property
    def nbytes(self) -> int:
        return self.taps.numel() * self.taps.element_size()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        err = self.errors.get(index)
        return {"pixels": None if err else self.taps[index], "label": self.samples[index].label, "index": index,
                "error": err}
