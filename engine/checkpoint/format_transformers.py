"""The transformers X-CLIP folder: config.json (model_type "xclip") + model.safetensors (or its
shards) or pytorch_model.bin, keys in transformers' layout (keys.TRANSFORMERS)."""

from __future__ import annotations

import json
import os

from ..config import XCLIPConfig
from . import keys
from .convert import CheckpointError
from .files import read_safetensors, torch_load_weights
from .loaded import Loaded, Source, arch_config, build_xclip


def is_transformers_folder(source: Source) -> bool:
    return source.has("config.json")


def read_transformers(source: Source, arch: str | None) -> Loaded:
    config, tensors = read_transformers_folder(source.path)
    config = arch_config(arch, config, source.path)
    model = build_xclip(config, tensors, source.path, keys.TRANSFORMERS, keys.DROP_TRANSFORMERS)
    return Loaded(model, "transformers", source.path, source.vocab_dir())


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
