"""AdamW with the official X-CLIP parameter groups, and the warm-up + cosine learning-rate schedule.

Source: microsoft/VideoX X-CLIP/utils/optimizer.py. The CLIP-initialised parameters train at
`lr`; the modules X-CLIP adds to CLIP (the cross-frame message tokens `message_*`, the
multi-frame integration transformer `mit.*`, the prompt generator and its visual projection
`prompts_*`) at `lr x 10`. Inside each, weights decay and biases, 1-D tensors (layer-norm
gains, class embedding) and positional embeddings (`no_weight_decay_keywords`) do not;
AdamW betas (0.9, 0.98), eps 1e-8. The scalar `logit_scale` does not decay here (the official
rule tests `len(shape) == 1` and so decays the 0-d scalar; pulling a temperature towards zero
has no purpose). The official `FIX_TEXT` freezes everything outside visual/mit/prompts; here
`model.freeze_text` does the same, off by default so that the text tower trains.

Schedule (timm CosineLRScheduler as build_scheduler configures it, t_in_epochs False): a linear
warm-up over `warmup` updates, then lr = min + (base - min) (1 + cos(pi t / total)) / 2 with t
counted from the start of training, min = base x min_lr_ratio. Two differences from timm: the
first update uses lr x 1/warmup instead of 0, and the floor is relative to each group's base lr.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# EVL (train/evl.py): its temporal modules (`temporal.N.{conv, pos, w_prev, w_next}`) start at zero
# and must grow to the scale of the frozen backbone's features to carry frame order: they take
# lr x new_lr_mult too; its decoder and head train at lr. No X-CLIP parameter name holds "temporal.".
NEW_MODULE_KEYS = ("message_", "mit.", "prompts_", "temporal.")
NO_DECAY_KEYS = ("positional_embedding",)
TEXT_KEYS = ("text.",)   # our module name of the CLIP text tower; logit_scale freezes with it (official)


def is_new_module(name: str) -> bool:
    return any(k in name for k in NEW_MODULE_KEYS)


def decays(name: str, p: torch.Tensor) -> bool:
    return p.ndim >= 2 and not name.endswith(".bias") and not any(k in name for k in NO_DECAY_KEYS)


def freeze_text(model: nn.Module) -> int:
    """The official fix_text: train only visual.*, mit.* and prompts*; returns how many froze."""
    n = 0
    for name, p in model.named_parameters():
        if not (name.startswith("visual.") or "mit" in name or "prompts" in name):
            p.requires_grad_(False)
            n += p.numel()
    return n


def param_groups(model: nn.Module, lr: float, new_lr_mult: float, weight_decay: float) -> list[dict]:
    """Four groups: (CLIP, new) x (decay, no decay); empty groups are left out."""
    buckets: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            buckets.setdefault((is_new_module(name), decays(name, p)), []).append((name, p))
    groups = []
    for (new, decay), items in sorted(buckets.items()):
        groups.append({
            "params": [p for _, p in items], "names": [n for n, _ in items],
            "lr": lr * (new_lr_mult if new else 1.0), "weight_decay": weight_decay if decay else 0.0,
            "group": f"{'new' if new else 'clip'}{'' if decay else '_no_decay'}",
        })
    if not groups:
        raise ValueError("no trainable parameters (every parameter is frozen)")
    return groups


def build_optimizer(model: nn.Module, lr: float, new_lr_mult: float = 10.0, weight_decay: float = 0.001,
                    betas=(0.9, 0.98), eps: float = 1e-8) -> torch.optim.AdamW:
    groups = param_groups(model, lr, new_lr_mult, weight_decay)
    try:
        # the fused kernel is ~10x faster than the foreach one on CPU (one pass over each tensor)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):   # an older torch or a device without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


class WarmupCosine:
    """LambdaLR factor of update `step` (0-based): linear warm-up, then cosine to `min_ratio`.

    A callable object rather than a lambda so that LambdaLR.state_dict saves its fields."""

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float = 0.01):
        self.total, self.warmup, self.min_ratio = int(total_steps), int(warmup_steps), float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(step, self.total) / max(self.total, 1)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(optimizer, total_steps: int, warmup_steps: int, min_ratio: float = 0.01):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, min_ratio))


# ---- loss and batch mixing (VideoX X-CLIP/datasets/blending.py, timm SoftTargetCrossEntropy) -------
def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot with label smoothing: on = 1 - s + s / K, off = s / K (blending.py one_hot)."""
    off = smoothing / num_classes
    t = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32)
    return t.scatter_(1, labels.view(-1, 1).cpu(), 1.0 - smoothing + off)


def soft_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of -sum_k target_k log softmax(logits)_k, in fp32."""
    return -(targets * torch.log_softmax(logits.float(), dim=-1)).sum()


def mix_batch(pixels: torch.Tensor, targets: torch.Tensor, rng, mixup: float, cutmix: float,
              switch_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CutmixMixupBlending: with probability `switch_prob` cutmix (a box of the frames of one
    clip pasted from another clip of the batch, same box for every frame), else mixup (a convex
    blend of two clips). `rng` is a numpy Generator, so the draw is reproducible per step."""
    b = pixels.shape[0]
    if b < 2 or (mixup <= 0 and cutmix <= 0):
        return pixels, targets
    perm = torch.from_numpy(rng.permutation(b))
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < switch_prob)
    if use_cutmix:
        lam = float(rng.beta(cutmix, cutmix))
        h, w = pixels.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        cw, ch = int(w * cut), int(h * cut)
        cx, cy = int(rng.integers(w)), int(rng.integers(h))
        x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        pixels = pixels.clone()
        pixels[..., y1:y2, x1:x2] = pixels[perm][..., y1:y2, x1:x2]
        lam = 1.0 - (x2 - x1) * (y2 - y1) / (w * h)   # the area that really stayed
    else:
        lam = float(rng.beta(mixup, mixup))
        pixels = lam * pixels + (1 - lam) * pixels[perm]
    return pixels, lam * targets + (1 - lam) * targets[perm]
