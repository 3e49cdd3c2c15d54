"""Readers for each checkpoint format: tensors and config, never arbitrary objects.

- transformers X-CLIP folder: config.json (model_type "xclip") + model.safetensors or
  pytorch_model.bin;
- official VideoX .pth: torch.load(path)["model"], config from tensor shapes or an --arch name;
- ours: a folder with xclip_engine.json + model.safetensors, or one .safetensors file whose
  metadata carries the same JSON.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections import OrderedDict

import torch

from ..config import XCLIPConfig
from .convert import CheckpointError

FORMAT_NAME = "xclip-engine"
FORMAT_VERSION = 1
OUR_JSON = "xclip_engine.json"


# ---- safe torch.load -------------------------------------------------------------------------
class _Opaque(OrderedDict):
    """Stand-in for a class pickled beside the weights (a yacs CfgNode, argparse.Namespace...).

    Constructing it yields a plain OrderedDict that only keeps what the pickle hands it, so no
    code of the original class runs, and `weights_only=True` (which lets only exact dicts take
    items) can still read a training checkpoint whose extras we do not need.
    """

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def torch_load_weights(path: str) -> object:
    """torch.load with weights_only=True; foreign classes become inert _Opaque stand-ins."""
    stubs: list = []
    for _ in range(20):
        try:
            with torch.serialization.safe_globals(stubs):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            m = _UNSUPPORTED.search(str(e))
            if not m:
                raise CheckpointError(f"{path}: cannot read it as a PyTorch checkpoint ({e})") from None
            name = m.group(1)
            stubs.append((_Opaque, name))
        except (RuntimeError, EOFError, OSError) as e:
            raise CheckpointError(f"{path}: cannot read it as a PyTorch checkpoint ({e}); "
                                  "is the file complete?") from None
    raise CheckpointError(f"{path}: too many foreign classes in the pickle")


def read_safetensors(path: str) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


# ---- transformers ----------------------------------------------------------------------------
# transformers' save_pretrained writes only values that differ from its defaults; these are
# XCLIPTextConfig / XCLIPVisionConfig / XCLIPConfig's defaults (configuration_x_clip.py).
_HF_TEXT = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_HF_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  mit_hidden_size=512, mit_intermediate_size=2048, mit_num_hidden_layers=1,
                  mit_num_attention_heads=8, image_size=224, patch_size=32, num_frames=8,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5)
_HF_TOP = dict(projection_dim=512, prompt_layers=2, prompt_alpha=0.1, prompt_num_attention_heads=8,
               prompt_hidden_act="quick_gelu")


def config_from_transformers(cfg: dict, origin: str) -> XCLIPConfig:
    if cfg.get("model_type") not in (None, "xclip"):
        raise CheckpointError(f"{origin}: model_type is {cfg.get('model_type')!r}, not 'xclip'")
    t = {**_HF_TEXT, **(cfg.get("text_config") or {})}
    v = {**_HF_VISION, **(cfg.get("vision_config") or {})}
    top = {**_HF_TOP, **cfg}
    checks = [
        (t["intermediate_size"] == 4 * t["hidden_size"], "text intermediate_size != 4 x hidden_size"),
        (v["intermediate_size"] == 4 * v["hidden_size"], "vision intermediate_size != 4 x hidden_size"),
        (v["mit_hidden_size"] == top["projection_dim"], "mit_hidden_size != projection_dim"),
        (v["mit_intermediate_size"] == 4 * v["mit_hidden_size"], "mit_intermediate_size != 4 x mit_hidden_size"),
        (all(a == "quick_gelu" for a in (t["hidden_act"], v["hidden_act"], top["prompt_hidden_act"])),
         "an activation other than quick_gelu"),
    ]
    for ok, what in checks:
        if not ok:
            raise CheckpointError(f"{origin}: unsupported X-CLIP variant ({what}); X-CLIP as released has "
                                  "4x MLPs, QuickGELU and an MIT as wide as the projection")
    return XCLIPConfig(
        image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
        vision_width=v["hidden_size"], vision_layers=v["num_hidden_layers"], vision_heads=v["num_attention_heads"],
        text_width=t["hidden_size"], text_layers=t["num_hidden_layers"], text_heads=t["num_attention_heads"],
        vocab_size=t["vocab_size"], context_length=t["max_position_embeddings"],
        embed_dim=top["projection_dim"], num_frames=v["num_frames"],
        mit_layers=v["mit_num_hidden_layers"], mit_heads=v["mit_num_attention_heads"],
        prompt_layers=top["prompt_layers"], prompt_heads=top["prompt_num_attention_heads"],
        prompt_alpha=float(top["prompt_alpha"]), layer_norm_eps=float(v["layer_norm_eps"]),
    )


def read_transformers_folder(folder: str) -> tuple[XCLIPConfig, dict]:
    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    config = config_from_transformers(cfg, cfg_path)
    st, st_index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
    binary = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(st):
        tensors, _ = read_safetensors(st)
    elif os.path.isfile(st_index):
        with open(st_index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(os.path.join(folder, shard))[0])
    elif os.path.isfile(binary):
        tensors = torch_load_weights(binary)
        if not isinstance(tensors, dict):
            raise CheckpointError(f"{binary}: expected a state dict, found {type(tensors).__name__}")
    else:
        raise CheckpointError(f"{folder}: has config.json but no model.safetensors or pytorch_model.bin")
    return config, tensors


# ---- official VideoX ---------------------------------------------------------------------------
def official_state_dict(obj, origin: str) -> dict:
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or "visual.conv1.weight" not in {k.removeprefix("module.") for k in sd}:
        raise CheckpointError(f"{origin}: not an official X-CLIP checkpoint (no 'model' dict with "
                              "'visual.conv1.weight')")
    return {k.removeprefix("module."): v for k, v in sd.items() if torch.is_tensor(v)}


def _count(sd: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def config_from_official(sd: dict, origin: str) -> XCLIPConfig:
    """Read the architecture off the tensor shapes, as VideoX's build_model does (heads = width/64)."""
    needed = ["visual.conv1.weight", "visual.positional_embedding", "ln_final.weight", "text_projection",
              "token_embedding.weight", "positional_embedding", "mit.positional_embedding"]
    absent = [k for k in needed if k not in sd]
    if absent:
        hint = " (a plain CLIP checkpoint? X-CLIP has mit.* and prompts_generator.*)" if "mit.positional_embedding" \
            in absent else ""
        raise CheckpointError(f"{origin}: cannot read the architecture off the weights, missing keys "
                              f"{absent}{hint}")
    conv = sd["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = sd["ln_final.weight"].shape[0]
    embed = sd["text_projection"].shape[1]
    return XCLIPConfig(
        image_size=patch * grid, patch_size=patch, vision_width=width,
        vision_layers=_count(sd, "visual.transformer.resblocks."), vision_heads=width // 64,
        text_width=text_width, text_layers=_count(sd, "transformer.resblocks."), text_heads=text_width // 64,
        vocab_size=sd["token_embedding.weight"].shape[0], context_length=sd["positional_embedding"].shape[0],
        embed_dim=embed, num_frames=sd["mit.positional_embedding"].shape[1],
        mit_layers=_count(sd, "mit.resblocks."), mit_heads=embed // 64,
        prompt_layers=_count(sd, "prompts_generator.decoder."), prompt_heads=embed // 64,
        prompt_alpha=0.1,
    )


# ---- ours --------------------------------------------------------------------------------------
def parse_our_meta(meta: dict, origin: str) -> tuple[XCLIPConfig, dict]:
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{origin}: not an {FORMAT_NAME} checkpoint (format={meta.get('format')!r})")
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(f"{origin}: written by a newer xclip-engine (format_version "
                              f"{meta.get('format_version')} > {FORMAT_VERSION}); upgrade xclip-engine")
    try:
        return XCLIPConfig.from_dict(meta["config"]), meta
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{origin}: bad config in the checkpoint's metadata ({e})") from None


def save_ours(state_dict: dict, config: XCLIPConfig, path: str, **extra) -> str:
    """Write our format: a folder (model.safetensors + xclip_engine.json) or one .safetensors file.

    Written to a temporary name and renamed, so an interrupted save never leaves half a file.
    """
    from safetensors.torch import save_file

    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config.to_dict(), **extra}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.endswith(".safetensors"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        save_file(tensors, tmp, metadata={"xclip_engine": json.dumps(meta)})
        os.chmod(tmp, 0o644)   # safetensors creates 0600 files; a shipped model must be readable by all
        os.replace(tmp, path)
        return path
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, "model.safetensors.tmp")
    save_file(tensors, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, OUR_JSON + ".tmp"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    os.replace(os.path.join(path, OUR_JSON + ".tmp"), os.path.join(path, OUR_JSON))
    return path
