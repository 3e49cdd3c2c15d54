"""Random-init X-CLIP models for tests, built by transformers (the parity oracle) and saved."""

from __future__ import annotations

import re

import torch

TINY_HF = dict(
    text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
    vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8, num_frames=4, mit_hidden_size=64,
                       mit_intermediate_size=256, mit_num_attention_heads=2),
    projection_dim=64, prompt_num_attention_heads=2,
)
B32_HF = {}   # transformers' XCLIPConfig defaults are xclip-base-patch32, 8 frames


def hf_model(kwargs: dict, seed: int = 0):
    from transformers import XCLIPConfig, XCLIPModel

    torch.manual_seed(seed)
    model = XCLIPModel(XCLIPConfig(**kwargs)).eval()
    with torch.no_grad():
        # transformers' init (std 0.02) leaves the residual branches tiny, so a swapped q/k or a
        # dropped message token would move the outputs by less than the tolerance; 1/sqrt(fan_in)
        # weights make every branch count, and alpha / MIT position embedding get distinct values
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embedding" not in name:
                p.normal_(std=p.shape[1] ** -0.5)
        model.mit.position_embedding.normal_(std=0.5)
        model.prompts_generator.alpha.normal_(mean=0.1, std=0.05)
        model.logit_scale.fill_(4.0)
    return model


def token_batch(k: int, seed: int = 0) -> torch.Tensor:
    """[k, 77] ids: SOT, random words, EOT (49407), zero padding, of varying lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(k, 77, dtype=torch.long)
    for i in range(k):
        n = int(torch.randint(0, 12, (1,), generator=g))
        ids[i, 0] = 49406
        ids[i, 1:1 + n] = torch.randint(1, 49400, (n,), generator=g)
        ids[i, 1 + n] = 49407
    return ids


# An independent HF -> official (VideoX) key conversion, written with regexes rather than through
# the package's table, so that a wrong entry in engine/checkpoint/keys.py cannot pass by symmetry.
_RENAMES = [
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layernorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^mit\.encoder\.layers\.", "mit.resblocks."),
    (r"^mit\.position_embedding$", "mit.positional_embedding"),
    (r"^prompts_visual_layernorm\.", "prompts_visual_ln."),
    (r"^prompts_visual_projection$", "prompts_visual_proj"),
    (r"^prompts_generator\.layernorm\.", "prompts_generator.norm."),
    (r"\.self_attn\.", ".attn."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
]


def hf_to_official(sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key == "visual_projection.weight":
            out["visual.proj"] = value.t()
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.t()
            continue
        new = key
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    # nn.MultiheadAttention keeps q, k, v as one in_proj (rows q, k, v); the prompt generator's
    # cross-attention keeps them apart
    for key in [k for k in out if re.search(r"\.(attn|message_attn)\.q_proj\.weight$", k)
                and not k.startswith("prompts_generator")]:
        base = key[: -len("q_proj.weight")]
        for kind in ("weight", "bias"):
            out[f"{base}in_proj_{kind}"] = torch.cat([out.pop(f"{base}{p}_proj.{kind}") for p in "qkv"])
    return out
