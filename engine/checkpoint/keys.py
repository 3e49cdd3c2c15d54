"""Key tables between our parameter names and the two foreign checkpoint layouts.

Each table maps one of our keys (with `{}` for a layer number) to its source: a key, or a rule
- `Fuse(a, b, ...)`: concatenate source tensors along dim 0 (q, k, v rows in that order);
- `T(a)`: transpose a 2-D source (transformers stores projections as Linear weights [E, D];
  the official code and we use `x @ proj` with proj [D, E]).
`DROP_*` lists source keys that carry no weights (buffers), dropped on purpose.
Facts read from transformers' modeling_x_clip.py and VideoX X-CLIP/models/*.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fuse:
    parts: tuple[str, ...]

    def __init__(self, *parts: str):
        object.__setattr__(self, "parts", parts)


@dataclass(frozen=True)
class T:
    key: str


def _attn_hf(prefix: str) -> dict:
    """Self-attention with separate q/k/v projections (transformers) -> our fused qkv."""
    return {
        "qkv.weight": Fuse(*(f"{prefix}.{p}_proj.weight" for p in "qkv")),
        "qkv.bias": Fuse(*(f"{prefix}.{p}_proj.bias" for p in "qkv")),
        "out.weight": f"{prefix}.out_proj.weight",
        "out.bias": f"{prefix}.out_proj.bias",
    }


def _block_hf(ours: str, theirs: str) -> dict:
    table = {
        f"{ours}.ln_1.weight": f"{theirs}.layer_norm1.weight",
        f"{ours}.ln_1.bias": f"{theirs}.layer_norm1.bias",
        f"{ours}.ln_2.weight": f"{theirs}.layer_norm2.weight",
        f"{ours}.ln_2.bias": f"{theirs}.layer_norm2.bias",
        f"{ours}.mlp.fc1.weight": f"{theirs}.mlp.fc1.weight",
        f"{ours}.mlp.fc1.bias": f"{theirs}.mlp.fc1.bias",
        f"{ours}.mlp.fc2.weight": f"{theirs}.mlp.fc2.weight",
        f"{ours}.mlp.fc2.bias": f"{theirs}.mlp.fc2.bias",
    }
    table.update({f"{ours}.attn.{k}": v for k, v in _attn_hf(f"{theirs}.self_attn").items()})
    return table


def _attn_official(prefix: str) -> dict:
    """nn.MultiheadAttention: q, k, v already fused as in_proj (rows q, k, v)."""
    return {
        "qkv.weight": f"{prefix}.in_proj_weight",
        "qkv.bias": f"{prefix}.in_proj_bias",
        "out.weight": f"{prefix}.out_proj.weight",
        "out.bias": f"{prefix}.out_proj.bias",
    }


def _block_official(ours: str, theirs: str) -> dict:
    table = {
        f"{ours}.ln_1.weight": f"{theirs}.ln_1.weight",
        f"{ours}.ln_1.bias": f"{theirs}.ln_1.bias",
        f"{ours}.ln_2.weight": f"{theirs}.ln_2.weight",
        f"{ours}.ln_2.bias": f"{theirs}.ln_2.bias",
        f"{ours}.mlp.fc1.weight": f"{theirs}.mlp.c_fc.weight",
        f"{ours}.mlp.fc1.bias": f"{theirs}.mlp.c_fc.bias",
        f"{ours}.mlp.fc2.weight": f"{theirs}.mlp.c_proj.weight",
        f"{ours}.mlp.fc2.bias": f"{theirs}.mlp.c_proj.bias",
    }
    table.update({f"{ours}.attn.{k}": v for k, v in _attn_official(f"{theirs}.attn").items()})
    return table


def _ln(ours: str, theirs: str) -> dict:
    return {f"{ours}.weight": f"{theirs}.weight", f"{ours}.bias": f"{theirs}.bias"}


def _linear(ours: str, theirs: str, bias: bool = True) -> dict:
    return {f"{ours}.weight": f"{theirs}.weight", **({f"{ours}.bias": f"{theirs}.bias"} if bias else {})}


def _prompt_layer(theirs: str, kv) -> dict:
    ours = "prompts_generator.layers.{}"
    return {
        **_ln(f"{ours}.norm1", f"{theirs}.norm1"),
        **_ln(f"{ours}.norm3", f"{theirs}.norm3"),
        f"{ours}.cross_attn.q.weight": f"{theirs}.cross_attn.q_proj.weight",
        f"{ours}.cross_attn.kv.weight": kv,
        **_linear(f"{ours}.cross_attn.proj", f"{theirs}.cross_attn.proj"),
        **_linear(f"{ours}.mlp.fc1", f"{theirs}.mlp.0"),
        **_linear(f"{ours}.mlp.fc2", f"{theirs}.mlp.3"),
    }


_V = "vision_model.encoder.layers.{}"
TRANSFORMERS: dict = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    **_ln("visual.ln_pre", "vision_model.pre_layernorm"),
    **_linear("visual.blocks.{}.message_fc", f"{_V}.message_fc"),
    **_ln("visual.blocks.{}.message_ln", f"{_V}.message_ln"),
    **{f"visual.blocks.{{}}.message_attn.{k}": v for k, v in _attn_hf(f"{_V}.message_attn").items()},
    **_block_hf("visual.blocks.{}", _V),
    **_ln("visual.ln_post", "vision_model.post_layernorm"),
    "visual.proj": T("visual_projection.weight"),
    **_ln("prompts_visual_ln", "prompts_visual_layernorm"),
    "prompts_visual_proj": "prompts_visual_projection",
    "mit.positional_embedding": "mit.position_embedding",
    **_block_hf("mit.blocks.{}", "mit.encoder.layers.{}"),
    "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
    **_block_hf("text.blocks.{}", "text_model.encoder.layers.{}"),
    **_ln("text.ln_final", "text_model.final_layer_norm"),
    "text.text_projection": T("text_projection.weight"),
    **_ln("prompts_generator.norm", "prompts_generator.layernorm"),
    **_prompt_layer("prompts_generator.decoder.{}", Fuse("prompts_generator.decoder.{}.cross_attn.k_proj.weight",
                                                         "prompts_generator.decoder.{}.cross_attn.v_proj.weight")),
    "prompts_generator.alpha": "prompts_generator.alpha",
    "logit_scale": "logit_scale",
}
DROP_TRANSFORMERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

_OV = "visual.transformer.resblocks.{}"
OFFICIAL: dict = {
    "visual.conv1.weight": "visual.conv1.weight",
    "visual.class_embedding": "visual.class_embedding",
    "visual.positional_embedding": "visual.positional_embedding",
    **_ln("visual.ln_pre", "visual.ln_pre"),
    **_linear("visual.blocks.{}.message_fc", f"{_OV}.message_fc"),
    **_ln("visual.blocks.{}.message_ln", f"{_OV}.message_ln"),
    **{f"visual.blocks.{{}}.message_attn.{k}": v for k, v in _attn_official(f"{_OV}.message_attn").items()},
    **_block_official("visual.blocks.{}", _OV),
    **_ln("visual.ln_post", "visual.ln_post"),
    "visual.proj": "visual.proj",
    **_ln("prompts_visual_ln", "prompts_visual_ln"),
    "prompts_visual_proj": "prompts_visual_proj",
    "mit.positional_embedding": "mit.positional_embedding",
    **_block_official("mit.blocks.{}", "mit.resblocks.{}"),
    "text.token_embedding.weight": "token_embedding.weight",
    "text.positional_embedding": "positional_embedding",
    **_block_official("text.blocks.{}", "transformer.resblocks.{}"),
    **_ln("text.ln_final", "ln_final"),
    "text.text_projection": "text_projection",
    **_ln("prompts_generator.norm", "prompts_generator.norm"),
    **_prompt_layer("prompts_generator.decoder.{}", Fuse("prompts_generator.decoder.{}.cross_attn.k_proj.weight",
                                                         "prompts_generator.decoder.{}.cross_attn.v_proj.weight")),
    "prompts_generator.alpha": "prompts_generator.alpha",
    "logit_scale": "logit_scale",
}
# CLIP's JIT archives and some releases keep these scalars beside the weights.
DROP_OFFICIAL = ("input_resolution", "context_length", "vocab_size")
