"""The transformers X-CLIP folder: config.json (model_type "xclip") + model.safetensors (or its
shards) or pytorch_model.bin, keys in transformers' layout (keys.TRANSFORMERS)."""

from __future__ import annotations

import os

from ..config import ConfigError, XCLIPConfig
from . import keys
from .convert import CheckpointError
from .files import read_json, read_safetensors, torch_load_weights
from .loaded import Loaded, Source, arch_config, build_strict


def is_transformers_folder(source: Source) -> bool:
    return source.has("config.json")


def read_transformers(source: Source, arch: str | None) -> Loaded:
    config, tensors = read_transformers_folder(source.path)
    config = arch_config(arch, config, source.path)
    # the config is checked against the weights' own shapes before the model is built
    model = build_strict(config, tensors, source.path, keys.TRANSFORMERS, keys.DROP_TRANSFORMERS,
                        config_origin=source.file("config.json") if arch is None else f"--arch {arch}",
                        names=HF_NAMES if arch is None else None)
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


# Our field -> where transformers' config.json keeps it, so that errors name what to edit.
HF_NAMES = {
    "image_size": "vision_config.image_size", "patch_size": "vision_config.patch_size",
    "vision_width": "vision_config.hidden_size", "vision_layers": "vision_config.num_hidden_layers",
    "vision_heads": "vision_config.num_attention_heads", "text_width": "text_config.hidden_size",
    "text_layers": "text_config.num_hidden_layers", "text_heads": "text_config.num_attention_heads",
    "vocab_size": "text_config.vocab_size", "context_length": "text_config.max_position_embeddings",
    "embed_dim": "projection_dim", "num_frames": "vision_config.num_frames",
    "mit_layers": "vision_config.mit_num_hidden_layers", "mit_heads": "vision_config.mit_num_attention_heads",
    "prompt_layers": "prompt_layers", "prompt_heads": "prompt_num_attention_heads",
    "prompt_alpha": "prompt_alpha", "layer_norm_eps": "vision_config.layer_norm_eps",
}


def _whole(x):
    # JSON writers may spell 224 as 224.0; a fractional size stays a float and is refused by validate
    return int(x) if isinstance(x, float) and x.is_integer() else x


def config_from_transformers(cfg: dict, origin: str) -> XCLIPConfig:
    """Our config from transformers' config.json, validated field by field before anything is built."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{origin}: holds a JSON {type(cfg).__name__}, expected an object with the "
                              "X-CLIP configuration (model_type, text_config, vision_config, ...)")
    if cfg.get("model_type") not in (None, "xclip"):
        raise CheckpointError(f"{origin}: model_type is {cfg.get('model_type')!r}, not 'xclip'")
    for sub in ("text_config", "vision_config"):
        if cfg.get(sub) is not None and not isinstance(cfg[sub], dict):
            raise CheckpointError(f"{origin}: {sub} is {cfg[sub]!r:.60}; expected an object of fields "
                                  f"(e.g. {{\"hidden_size\": 512, ...}}) or no {sub} for transformers' defaults")
    t = {**_HF_TEXT, **(cfg.get("text_config") or {})}
    v = {**_HF_VISION, **(cfg.get("vision_config") or {})}
    top = {**_HF_TOP, **cfg}
    try:
        config = XCLIPConfig(
            image_size=_whole(v["image_size"]), patch_size=_whole(v["patch_size"]),
            vision_width=_whole(v["hidden_size"]), vision_layers=_whole(v["num_hidden_layers"]),
            vision_heads=_whole(v["num_attention_heads"]),
            text_width=_whole(t["hidden_size"]), text_layers=_whole(t["num_hidden_layers"]),
            text_heads=_whole(t["num_attention_heads"]),
            vocab_size=_whole(t["vocab_size"]), context_length=_whole(t["max_position_embeddings"]),
            embed_dim=_whole(top["projection_dim"]), num_frames=_whole(v["num_frames"]),
            mit_layers=_whole(v["mit_num_hidden_layers"]), mit_heads=_whole(v["mit_num_attention_heads"]),
            prompt_layers=_whole(top["prompt_layers"]), prompt_heads=_whole(top["prompt_num_attention_heads"]),
            prompt_alpha=top["prompt_alpha"], layer_norm_eps=v["layer_norm_eps"],
        ).validate(origin, HF_NAMES)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    for where, d, key in (("text_config", t, "intermediate_size"), ("vision_config", v, "intermediate_size"),
                          ("vision_config", v, "mit_hidden_size"), ("vision_config", v, "mit_intermediate_size")):
        d[key] = _whole(d[key])
        if isinstance(d[key], bool) or not isinstance(d[key], int):
            raise CheckpointError(f"{origin}: {where}.{key} is {d[key]!r}; expected a whole number")
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
    return config


def read_transformers_folder(folder: str) -> tuple[XCLIPConfig, dict]:
    cfg_path = os.path.join(folder, "config.json")
    cfg = read_json(cfg_path, "transformers' X-CLIP config.json")
    config = config_from_transformers(cfg, cfg_path)
    return config, read_folder_tensors(folder)


def read_folder_tensors(folder: str) -> dict:
    """The tensors of a transformers folder: model.safetensors, its shards, or pytorch_model.bin."""
    st, st_index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
    binary = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(st):
        tensors, _ = read_safetensors(st)
    elif os.path.isfile(st_index):
        index = read_json(st_index, "a safetensors index")
        try:
            shards = sorted(set(index["weight_map"].values()))
        except (KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{st_index}: no 'weight_map' object naming the shard files") from None
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(os.path.join(folder, shard))[0])
    elif os.path.isfile(binary):
        tensors = torch_load_weights(binary)
        if not isinstance(tensors, dict):
            raise CheckpointError(f"{binary}: expected a state dict, found {type(tensors).__name__}")
    else:
        raise CheckpointError(f"{folder}: has config.json but no model.safetensors or pytorch_model.bin")
    return tensors
