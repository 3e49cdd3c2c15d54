"""The official VideoX X-CLIP .pth: torch.load(path)["model"] in the original code's key layout
(keys.OFFICIAL); the architecture is read off the tensor shapes, or given by an --arch name."""

from __future__ import annotations

import torch

from ..config import ConfigError, XCLIPConfig, get_entry
from . import keys
from .convert import CheckpointError
from .loaded import Loaded, Source, arch_config, build_strict


def is_torch_file(source: Source) -> bool:
    """Any other file: the official format is the last one tried, and its reader says when the
    file is not an X-CLIP checkpoint at all."""
    return not source.is_dir


def read_official(source: Source, arch: str | None) -> Loaded:
    sd = official_state_dict(source.torch_object(), source.path)
    config = _official_config(arch, sd, source.path)
    model = build_strict(config, sd, source.path, keys.OFFICIAL, keys.DROP_OFFICIAL)
    return Loaded(model, "official", source.path)


def _official_config(arch: str | None, sd: dict, origin: str) -> XCLIPConfig:
    if arch is None:
        return config_from_official(sd, origin)
    try:
        inferred = config_from_official(sd, origin)
    except CheckpointError:   # too little there to infer: the strict load will list what is missing
        return get_entry(arch).config
    return arch_config(arch, inferred, origin)


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
    config = XCLIPConfig(
        image_size=patch * grid, patch_size=patch, vision_width=width,
        vision_layers=_count(sd, "visual.transformer.resblocks."), vision_heads=width // 64,
        text_width=text_width, text_layers=_count(sd, "transformer.resblocks."), text_heads=text_width // 64,
        vocab_size=sd["token_embedding.weight"].shape[0], context_length=sd["positional_embedding"].shape[0],
        embed_dim=embed, num_frames=sd["mit.positional_embedding"].shape[1],
        mit_layers=_count(sd, "mit.resblocks."), mit_heads=embed // 64,
        prompt_layers=_count(sd, "prompts_generator.decoder."), prompt_heads=embed // 64,
        prompt_alpha=0.1,
    )
    try:
        return config.validate(f"{origin} (architecture read off the tensor shapes)")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
