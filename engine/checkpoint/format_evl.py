"""The official EVL .pth (OpenGVLab/efficient-video-recognition) and its CLIP backbone: two files, one
model (docs/model-evl.md §12).

    xe.load("k400_vitb16_8f_dec4x768.pth", backbone="ViT-B-16.pt")

The .pth is `torch.load(path)["model"]` (also a bare state dict), keys prefixed `module.` (DDP) or not:
the decoder and head (keys_evl.EVL_OFFICIAL). The released files were trained with a frozen backbone
and hold none of it: `backbone=` names a CLIP file (backbone_formats.py). A .pth trained with
`--finetune_backbone` holds its own `backbone.*`; then no backbone is passed.

The architecture is read off the shapes: C from decoder.cls_token, T from temporal_pos_embed, the
patch grid g from w1's (2g-1)² rows, K from the decoder layers, the classes from proj.2, decoder
heads C/64; the backbone gives the patch size, depth and heads. The two must agree (C, g). The frame
stride is not in the file: the release's (16; 8 for 32 frames) unless `arch` names a registry entry.
"""

from __future__ import annotations

import math
import os

import torch

from ..config import ConfigError, EVLConfig, get_entry
from ..model import build_model
from . import keys_evl
from .backbone_formats import BackboneWeights, read_backbone
from .convert import CheckpointError, convert_state_dict
from .loaded import Loaded, Source
from .torchscript import is_torchscript_archive

_HINT = ("Check that the .pth is an official EVL checkpoint and the backbone the CLIP model it was trained on "
         "(ViT-B-16.pt for the B/16 releases, ViT-L-14.pt for L/14).")


def evl_state_dict(obj) -> dict | None:
    """The official EVL state dict in `obj` (module. stripped), or None when it is not one."""
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or "decoder.cls_token" not in {str(k).removeprefix("module.") for k in sd}:
        return None
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(k, str) and torch.is_tensor(v)}


def is_evl_official(source: Source) -> bool:
    return not source.is_dir and evl_state_dict(source.torch_object()) is not None


def is_torchscript(source: Source) -> bool:
    return not source.is_dir and is_torchscript_archive(source.path)


def refuse_torchscript(source: Source, arch: str | None) -> Loaded:
    raise CheckpointError(f"{source.path}: a TorchScript archive (OpenAI's CLIP release?): a backbone, not a video "
                          "model; pass it as backbone= (CLI: --backbone) with an official EVL .pth")


def suggest_backbone(width: int, grid: int) -> str:
    known = {(768, 14): "ViT-B-16.pt (CLIP ViT-B/16)", (1024, 16): "ViT-L-14.pt (CLIP ViT-L/14)"}
    return known.get((width, grid), f"a CLIP ViT of width {width} with a {grid} x {grid} patch grid")


def _decoder_facts(sd: dict, origin: str) -> dict:
    need = ["decoder.cls_token", "decoder.temporal_pos_embed.0", "decoder.cross_attention.0.w1",
            "decoder.decoder_layers.0.mlp.fc1.weight", "proj.2.weight"]
    absent = [k for k in need if k not in sd]
    if absent:
        raise CheckpointError(f"{origin}: cannot read EVL's architecture off the weights, missing {absent}")
    width = int(sd["decoder.cls_token"].shape[0])
    rows = int(sd["decoder.cross_attention.0.w1"].shape[0])
    side = math.isqrt(rows)
    if side * side != rows or side % 2 == 0:
        raise CheckpointError(f"{origin}: decoder.cross_attention.0.w1 has {rows} rows, not (2g - 1)² for a patch "
                              "grid g")
    return dict(width=width, grid=(side + 1) // 2, num_frames=int(sd["decoder.temporal_pos_embed.0"].shape[0]),
                decoder_layers=len({k.split(".")[2] for k in sd if k.startswith("decoder.decoder_layers.")}),
                mlp=int(sd["decoder.decoder_layers.0.mlp.fc1.weight"].shape[0]),
                num_classes=int(sd["proj.2.weight"].shape[0]))


def _own_backbone(sd: dict, origin: str) -> BackboneWeights:
    """The backbone.* of a .pth trained with --finetune_backbone, its patch Linear made conv1's shape."""
    sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}
    w, pos = sd.get("backbone.patch_embed.proj.weight"), sd.get("backbone.pos_embed")
    if w is None or pos is None or w.ndim != 2 or pos.ndim != 2:
        raise CheckpointError(f"{origin}: has backbone.* keys but no backbone.patch_embed.proj.weight / pos_embed")
    patch = math.isqrt(w.shape[1] // 3)
    grid = math.isqrt(pos.shape[0] - 1)
    if 3 * patch * patch != w.shape[1] or grid * grid + 1 != pos.shape[0]:
        raise CheckpointError(f"{origin}: backbone.patch_embed.proj.weight {tuple(w.shape)} / pos_embed "
                              f"{tuple(pos.shape)} are not a square patch and grid")
    bias = sd.get("backbone.patch_embed.proj.bias")
    if bias is not None and bool(bias.abs().max() > 0):
        raise CheckpointError(f"{origin}: backbone.patch_embed.proj.bias is not zero; CLIP's patch embedding has "
                              "no bias (this backbone was not trained from CLIP's weights)")
    sd["backbone.patch_embed.proj.weight"] = w.reshape(w.shape[0], 3, patch, patch)
    layers = len({k.split(".")[2] for k in sd if k.startswith("backbone.blocks.")})
    width = int(w.shape[0])
    return BackboneWeights(sd, keys_evl.EVL_OFFICIAL_BACKBONE, keys_evl.DROP_EVL_OFFICIAL, "official EVL (fine-tuned)",
                           origin, width, layers, patch, grid, max(1, width // 64))


def evl_config(facts: dict, bb: BackboneWeights, origin: str, arch: str | None = None) -> EVLConfig:
    """The EVLConfig of a decoder (facts) on a backbone, both checked to fit each other."""
    c, g = facts["width"], facts["grid"]
    where = f"{origin} + backbone {bb.origin}"
    if bb.width != c:
        raise CheckpointError(f"{where}: the backbone is {bb.width} wide, the EVL decoder {c} (decoder.cls_token); "
                              f"this .pth needs {suggest_backbone(c, g)}")
    if bb.grid != g:
        raise CheckpointError(f"{where}: the backbone has a {bb.grid} x {bb.grid} patch grid ({bb.image_size} px, "
                              f"patch {bb.patch}), the decoder's w1 a {g} x {g} one; this .pth needs "
                              f"{suggest_backbone(c, g)}")
    t = facts["num_frames"]
    try:
        config = EVLConfig(image_size=bb.image_size, patch_size=bb.patch, width=c, layers=bb.layers, heads=bb.heads,
                           num_frames=t, decoder_layers=facts["decoder_layers"], decoder_heads=max(1, c // 64),
                           decoder_mlp_ratio=facts["mlp"] / c, num_classes=facts["num_classes"],
                           frame_stride=8 if t == 32 else 16, layer_norm_eps=bb.eps,
                           ).validate(f"{where} (architecture read off the tensor shapes)")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    if arch is not None:
        ref = get_entry(arch).config
        if getattr(ref, "family", "xclip") != "evl":
            raise CheckpointError(f"--arch {arch} is an X-CLIP architecture; {origin} is an EVL checkpoint")
        free = ("heads", "decoder_heads", "decoder_dropout", "frame_stride")
        diff = {k: (v, getattr(ref, k)) for k, v in config.to_dict().items() if k not in free and getattr(ref, k) != v}
        if diff:
            rows = ", ".join(f"{k}: file {a} vs {arch} {b}" for k, (a, b) in diff.items())
            raise CheckpointError(f"{where}: does not match --arch {arch} ({rows})")
        config = ref
    return config


def read_evl_official(source: Source, arch: str | None) -> Loaded:
    sd = evl_state_dict(source.torch_object())
    facts = _decoder_facts(sd, source.path)
    own = any(k.startswith("backbone.") for k in sd)
    backbone = getattr(source, "backbone", None)
    if own and backbone is not None:
        raise CheckpointError(f"{source.path}: holds its own (fine-tuned) backbone; the backbone {backbone} is not "
                              "used: load it without backbone= / --backbone")
    if not own and backbone is None:
        raise CheckpointError(
            f"{source.path}: an official EVL checkpoint holds the decoder and head only: pass its CLIP backbone, "
            f"{suggest_backbone(facts['width'], facts['grid'])}: xe.load(PTH, backbone=FILE), CLI --backbone FILE "
            "(OpenAI's .pt, a transformers CLIP folder or an open_clip checkpoint)")
    bb = _own_backbone(sd, source.path) if own else read_backbone(backbone)
    config = evl_config(facts, bb, source.path, arch)
    model = build_model(config)
    target = model.state_dict()
    ours = {k: v for k, v in target.items() if k.startswith("backbone.")}
    rest = {k: v for k, v in target.items() if not k.startswith("backbone.")}
    decoder = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    weights = convert_state_dict(bb.tensors, ours, bb.table, bb.drop, f"{bb.origin} (the backbone)", _HINT)
    weights.update(convert_state_dict(decoder, rest, keys_evl.EVL_OFFICIAL, (), source.path, _HINT))
    model.load_state_dict(weights, strict=True)
    labels = None
    if config.num_classes == 400:   # the official release is Kinetics-400, in the standard class order
        from ..io.labels import load_labels

        labels = load_labels("k400")
    meta = {"backbone_kind": bb.kind}
    if not own:
        meta["backbone"] = os.path.realpath(bb.origin)
    return Loaded(model.eval(), "official", source.path, labels=labels, meta=meta)
