"""A random EVL whose every branch counts, for the export and bf16 tests (tests/xclip_factory.py is X-CLIP's)."""

from __future__ import annotations


def scaled_evl(config, seed: int = 0):
    """A random EVL of `config` whose every branch counts (as tests/xclip_factory.py does for X-CLIP).

    EVL's own init leaves the temporal terms at zero (conv, position embedding, the adjacent-frame
    tables w_prev / w_next) and the linears at std 0.02, so a broken temporal term or adjacent-frame
    op would not move the outputs: here every linear gets 1/sqrt(fan_in) weights, and the temporal
    parameters and the query token distinct random values.
    """
    import torch

    from xclip_engine.engine.model import EVL

    torch.manual_seed(seed)
    model = EVL(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("temporal."):
                p.normal_(std=0.3 if name.endswith("conv.weight") else 0.1 if name.endswith("conv.bias") else 0.5)
            elif p.ndim == 2 and "embedding" not in name:
                p.normal_(std=p.shape[1] ** -0.5)
        model.cls_token.normal_(std=0.5)
    return model
