"""EVL's backbone: a CLIP image tower from one of the files CLIP weights come in (docs/model-evl.md §12).

    read_backbone(path) -> BackboneWeights: the file's tensors under their own names, the key table
    that maps our `backbone.*` parameters to them, and the tower's sizes read off the shapes.

Formats, tried in this order (one table, as detect.py's):
- OpenAI's CLIP release (`ViT-B-16.pt`): a TorchScript archive, read tensors-only (torchscript.py);
- transformers' CLIPVisionModel or CLIPModel folder (config.json + weights): hidden_act must be
  quick_gelu, the activation of CLIP's towers;
- a .safetensors or pickled state dict in OpenAI's layout (`visual.*`): OpenAI's non-JIT state dict,
  open_clip checkpoints (also under "state_dict", with DDP's `module.` prefix). Other keys of a whole
  CLIP model (its text tower) are not read. open_clip towers trained with plain GELU instead of
  QuickGELU (not OpenAI's weights) cannot be told apart by their tensors: use OpenAI's weights.
Heads are width / 64 (CLIP's rule) unless a transformers config.json says otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import keys_evl
from .convert import CheckpointError
from .files import read_json, read_safetensors, torch_load_weights
from .torchscript import is_torchscript_archive, read_torchscript_tensors


@dataclass
class BackboneWeights:
    tensors: dict        # the source's tensors, under the source's names
    table: dict          # our backbone.* keys -> the source's (keys_evl.py)
    drop: tuple          # source tensors EVL does not use
    kind: str            # which format (for messages and the model's metadata)
    origin: str          # the file or folder
    width: int
    layers: int
    patch: int
    grid: int
    heads: int
    eps: float = 1e-5

    @property
    def image_size(self) -> int:
        return self.patch * self.grid


class _Format(NamedTuple):
    name: str
    detect: Callable[[str], bool]
    read: Callable[[str], BackboneWeights]


def _count(sd: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def _sizes(conv, pos, origin: str, conv_key: str, pos_key: str) -> tuple[int, int, int]:
    """(width, patch, grid) from the patch embedding [C, 3, p, p] and positional embedding [g²+1, C]."""
    if conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise CheckpointError(f"{origin}: {conv_key} has shape {tuple(conv.shape)}, expected [width, 3, patch, patch]")
    grid = math.isqrt(max(pos.shape[0] - 1, 0)) if pos.ndim == 2 else 0
    if pos.ndim != 2 or grid < 1 or grid * grid + 1 != pos.shape[0] or pos.shape[1] != conv.shape[0]:
        raise CheckpointError(f"{origin}: {pos_key} has shape {tuple(pos.shape)}, expected [grid² + 1, "
                              f"{conv.shape[0]}] (the class token and a square patch grid)")
    return int(conv.shape[0]), int(conv.shape[-1]), grid


def openai_layout(sd: dict, origin: str, kind: str) -> BackboneWeights:
    """A CLIP image tower in OpenAI's names (`visual.*`); keys outside `visual.` are not read."""
    sd = {k.removeprefix("module."): v for k, v in sd.items() if torch.is_tensor(v)}
    sd = {k: v for k, v in sd.items() if k.startswith("visual.")}
    need = ("visual.conv1.weight", "visual.positional_embedding")
    absent = [k for k in need if k not in sd]
    if absent:
        raise CheckpointError(f"{origin}: not a CLIP image tower: no {', '.join(absent)} (expected OpenAI's layout "
                              "visual.conv1.weight, visual.transformer.resblocks.N..., or a transformers CLIP folder)")
    width, patch, grid = _sizes(sd[need[0]], sd[need[1]], origin, *need)
    layers = _count(sd, "visual.transformer.resblocks.")
    return BackboneWeights(sd, keys_evl.CLIP_OPENAI, keys_evl.DROP_CLIP_OPENAI, kind, origin, width, layers, patch,
                           grid, max(1, width // 64))


# ---- the formats ---------------------------------------------------------------------------------
def _is_transformers(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


# CLIPVisionConfig's defaults (transformers configuration_clip.py): save_pretrained leaves them out
_HF_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def _read_transformers(folder: str) -> BackboneWeights:
    from .format_transformers import read_folder_tensors

    cfg_path = os.path.join(folder, "config.json")
    cfg = read_json(cfg_path, "transformers' CLIP config.json")
    kind = cfg.get("model_type") if isinstance(cfg, dict) else None
    if kind == "clip":
        vision = cfg.get("vision_config") or {}
    elif kind == "clip_vision_model":
        vision = cfg
    else:
        raise CheckpointError(f"{cfg_path}: model_type is {kind!r}; a backbone folder is transformers' "
                              "CLIPVisionModel ('clip_vision_model') or CLIPModel ('clip')")
    v = {**_HF_VISION, **vision}
    if v["hidden_act"] != "quick_gelu":
        raise CheckpointError(f"{cfg_path}: hidden_act is {v['hidden_act']!r}; EVL's backbone is CLIP with "
                              "quick_gelu, as OpenAI's weights are")
    if v["intermediate_size"] != 4 * v["hidden_size"]:
        raise CheckpointError(f"{cfg_path}: intermediate_size {v['intermediate_size']} is not 4 x hidden_size "
                              f"{v['hidden_size']}, as in CLIP")
    raw = read_folder_tensors(folder)
    parts = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
    if any(k.startswith("vision_model.") for k in raw):   # CLIPModel, and CLIPVisionModel before transformers 5
        raw = {k.removeprefix("vision_model."): t for k, t in raw.items() if k.startswith("vision_model.")}
    sd = {k: t for k, t in raw.items() if k.startswith(parts)}
    need = ("embeddings.patch_embedding.weight", "embeddings.position_embedding.weight")
    absent = [k for k in need if k not in sd]
    if absent:
        raise CheckpointError(f"{folder}: no CLIP vision tower in the weights (missing {', '.join(absent)})")
    width, patch, grid = _sizes(sd[need[0]], sd[need[1]], folder, *need)
    heads = v["num_attention_heads"]
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise CheckpointError(f"{cfg_path}: num_attention_heads is {heads!r}; expected a whole number")
    return BackboneWeights(sd, keys_evl.CLIP_TRANSFORMERS, keys_evl.DROP_CLIP_TRANSFORMERS, "transformers CLIP",
                           folder, width, _count(sd, "encoder.layers."), patch, grid, heads,
                           float(v["layer_norm_eps"]))


def _is_ours(path: str) -> bool:
    from .format_ours import OUR_JSON

    return os.path.isfile(os.path.join(path, OUR_JSON)) if os.path.isdir(path) else False


def _refuse_ours(path: str) -> BackboneWeights:
    raise CheckpointError(f"{path}: an xclip-engine model folder holds a whole model; load it without a backbone")


def _read_torchscript(path: str) -> BackboneWeights:
    return openai_layout(read_torchscript_tensors(path), path, "OpenAI CLIP (TorchScript)")


def _is_safetensors(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(".safetensors")


def _read_safetensors(path: str) -> BackboneWeights:
    tensors, meta = read_safetensors(path)
    if "xclip_engine" in meta:
        raise CheckpointError(f"{path}: an xclip-engine model file holds a whole model; load it without a backbone")
    return openai_layout(tensors, path, "CLIP state dict (safetensors)")


def _read_state_dict(path: str) -> BackboneWeights:
    obj = torch_load_weights(path)
    for key in ("state_dict", "model"):   # open_clip's training checkpoints keep it under "state_dict"
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a CLIP state dict")
    kind = "open_clip" if any(k.startswith("module.") for k in obj) else "CLIP state dict"
    return openai_layout(obj, path, kind)


BACKBONE_FORMATS: list[_Format] = [
    _Format("xclip-engine folder", _is_ours, _refuse_ours),
    _Format("transformers CLIP folder", _is_transformers, _read_transformers),
    _Format("OpenAI CLIP TorchScript archive", lambda p: os.path.isfile(p) and is_torchscript_archive(p),
            _read_torchscript),
    _Format("safetensors state dict", _is_safetensors, _read_safetensors),
    _Format("pickled state dict (OpenAI non-JIT, open_clip)", os.path.isfile, _read_state_dict),
]


def read_backbone(path) -> BackboneWeights:
    """The CLIP image tower at `path`, in whichever format it is (see the module docstring)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"backbone {path}: no such file or folder")
    for fmt in BACKBONE_FORMATS:
        if fmt.detect(path):
            return fmt.read(path)
    raise CheckpointError(f"backbone {path}: a folder without config.json; expected OpenAI's CLIP file "
                          "(ViT-B-16.pt), a transformers CLIP folder or a CLIP state dict")
