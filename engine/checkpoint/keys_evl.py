"""Key tables of EVL's checkpoints (docs/model-evl.md §12), in keys.py's style: ours -> theirs.

- `EVL_OFFICIAL`: the decoder and head of an official EVL .pth (OpenGVLab/efficient-video-recognition
  model.py `EVLTransformer`: `decoder.*`, `proj.0` LayerNorm, `proj.2` Linear), `module.` stripped.
- `EVL_OFFICIAL_BACKBONE`: the backbone of a .pth trained with `--finetune_backbone` (then the
  backbone is a registered module: vision_transformer.py `VisionTransformer2D`: `cls_token`,
  `pos_embed`, `patch_embed.proj` a Linear over flattened (3, p, p) patches, `blocks.{i}.{norm1,
  attn.{q,k,v,out}_proj, norm2, mlp.{fc1,fc2}}`). The released files (frozen backbone) hold none.
- `CLIP_OPENAI`: a CLIP image tower in OpenAI's layout (`visual.*`: the TorchScript archive, its
  plain state dict, open_clip checkpoints).
- `CLIP_TRANSFORMERS`: transformers' CLIPVisionModel / CLIPModel vision tower, `vision_model.`
  stripped (transformers 5 saves CLIPVisionModel without it).
The `DROP_*` tuples list source tensors that EVL does not use (ln_post, proj: §3).
"""

from __future__ import annotations

from .keys import Fuse, _block_hf, _block_official, _linear, _ln

_DL = "decoder.decoder_layers.{}"
EVL_OFFICIAL: dict = {
    "cls_token": "decoder.cls_token",
    **_linear("temporal.{}.conv", "decoder.temporal_conv.{}"),
    "temporal.{}.pos": "decoder.temporal_pos_embed.{}",
    "temporal.{}.w_prev": "decoder.cross_attention.{}.w1",   # query frame t, key frame t-1
    "temporal.{}.w_next": "decoder.cross_attention.{}.w2",   # query frame t, key frame t+1
    **_ln("decoder.{}.norm1", f"{_DL}.norm1"),
    **_ln("decoder.{}.norm2", f"{_DL}.norm2"),
    **_ln("decoder.{}.norm3", f"{_DL}.norm3"),
    **{k: v for p in ("q", "k", "v", "out") for k, v in _linear(f"decoder.{{}}.attn.{p}_proj",
                                                                 f"{_DL}.attn.{p}_proj").items()},
    **_linear("decoder.{}.mlp.fc1", f"{_DL}.mlp.fc1"),
    **_linear("decoder.{}.mlp.fc2", f"{_DL}.mlp.fc2"),
    **_ln("head_norm", "proj.0"),
    **_linear("head", "proj.2"),
}

_OB = "backbone.blocks.{}"
EVL_OFFICIAL_BACKBONE: dict = {
    # patch_embed.proj.weight [C, 3*p*p] is reshaped to conv1's [C, 3, p, p] before this table
    # (format_evl.py; the same map: the official code flattens each patch as (channel, row, column))
    "backbone.conv1.weight": "backbone.patch_embed.proj.weight",
    "backbone.class_embedding": "backbone.cls_token",
    "backbone.positional_embedding": "backbone.pos_embed",
    **_ln("backbone.ln_pre", "backbone.ln_pre"),
    **_ln(f"{_OB}.ln_1", f"{_OB}.norm1"),
    **_ln(f"{_OB}.ln_2", f"{_OB}.norm2"),
    f"{_OB}.attn.qkv.weight": Fuse(*(f"{_OB}.attn.{p}_proj.weight" for p in "qkv")),
    f"{_OB}.attn.qkv.bias": Fuse(*(f"{_OB}.attn.{p}_proj.bias" for p in "qkv")),
    **_linear(f"{_OB}.attn.out", f"{_OB}.attn.out_proj"),
    **_linear(f"{_OB}.mlp.fc1", f"{_OB}.mlp.fc1"),
    **_linear(f"{_OB}.mlp.fc2", f"{_OB}.mlp.fc2"),
}
DROP_EVL_OFFICIAL = ("backbone.patch_embed.proj.bias",)   # always zero (checked): conv1 has no bias

CLIP_OPENAI: dict = {
    "backbone.conv1.weight": "visual.conv1.weight",
    "backbone.class_embedding": "visual.class_embedding",
    "backbone.positional_embedding": "visual.positional_embedding",
    **_ln("backbone.ln_pre", "visual.ln_pre"),
    **_block_official("backbone.blocks.{}", "visual.transformer.resblocks.{}"),
}
DROP_CLIP_OPENAI = ("visual.ln_post.weight", "visual.ln_post.bias", "visual.proj")

CLIP_TRANSFORMERS: dict = {
    "backbone.conv1.weight": "embeddings.patch_embedding.weight",
    "backbone.class_embedding": "embeddings.class_embedding",
    "backbone.positional_embedding": "embeddings.position_embedding.weight",
    **_ln("backbone.ln_pre", "pre_layrnorm"),     # sic: transformers' CLIP spells it so
    **_block_hf("backbone.blocks.{}", "encoder.layers.{}"),
}
DROP_CLIP_TRANSFORMERS = ("post_layernorm.weight", "post_layernorm.bias", "embeddings.position_ids")

__all__ = ["CLIP_OPENAI", "CLIP_TRANSFORMERS", "EVL_OFFICIAL", "EVL_OFFICIAL_BACKBONE", "DROP_CLIP_OPENAI",
           "DROP_CLIP_TRANSFORMERS", "DROP_EVL_OFFICIAL"]
