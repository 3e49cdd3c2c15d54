"""A model family's test-time preprocessing, as data: the spec dicts and their one parser.

A model states how its input is made as a plain dict (what a registry entry's ``preprocessing``
returns and an export manifest records); the readers (``read_video``, ``read_clip``) take such a
dict as ``preprocessing=`` and pick the family's rules from it:

* X-CLIP: ``engine.config.xclip_preprocessing(config)`` (``"sampling": "tsn-center"``,
  docs/preprocessing.md §2-§6). Only the official X-CLIP rule is implemented, so its fields must be
  the ones that function writes.
* EVL: ``evl_preprocessing(num_frames, stride, size)`` below (``"family": "evl"``,
  ``"sampling": "stride"``, docs/preprocessing.md §7-§9).

Views are one string for both families: ``"NxM"`` = N temporal clips x M spatial crops (M = 1 or
3), view ``v`` = crop ``v // N`` of clip ``v % N``. EVL's official K400 evaluation, 1 spatial crop
x 3 temporal views, is ``"3x1"``; X-CLIP's multi-view test is ``"4x3"``.

No PyAV, OpenCV or torch here: engine.config can import this module cheaply.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

EVL_VIEWS = "3x1"   # the official K400 evaluation: 3 temporal views x 1 (centre) crop
EVL_INTERPOLATION = "bilinear (torch interpolate, align_corners=False, no antialiasing, on float)"

# every key either spec may hold; descriptive ones (color, layout, interpolation, ...) are checked
# for their value where the reader depends on it
_KEYS = {"family", "sampling", "num_frames", "stride", "resize_short_side", "resize_rounding", "crop",
         "three_crop_order", "interpolation", "color", "input_range", "mean", "std", "views", "layout"}


def parse_views(views: str) -> tuple[int, int]:
    """"NxM" -> (N temporal clips, M spatial crops); M must be 1 (centre crop) or 3, as officially
    for both families."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(views))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) not in (1, 3):
        raise ValueError(f"views must be 'NxM' with N >= 1 clips and M = 1 or 3 crops "
                         f"(e.g. '1x1', '4x3' or '3x1'), got {views!r}")
    return int(m.group(1)), int(m.group(2))


def evl_preprocessing(num_frames: int, stride: int, size: int = 224, views: str = EVL_VIEWS) -> dict:
    """EVL's test-time preprocessing (docs/preprocessing.md §7-§9) as a spec dict.

    Release settings: ``evl_preprocessing(8, 16)``, ``(16, 16)``, ``(32, 8)``; 224 px; ``views`` is
    the default the model is evaluated with (official K400: "3x1", 3 temporal views x 1 crop)."""
    from ..config import CLIP_MEAN, CLIP_STD  # here, not at the top: engine.config may import this module

    spec = {"family": "evl", "sampling": "stride", "num_frames": num_frames, "stride": stride,
            "resize_short_side": size, "resize_rounding": "floor", "crop": size,
            "three_crop_order": "start, middle, end", "interpolation": EVL_INTERPOLATION, "color": "RGB",
            "input_range": "0..1", "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "views": views,
            "layout": "[B, T, 3, S, S] float32"}
    parse_preprocessing(spec)   # refuse bad numbers here, where the caller wrote them
    return spec


@dataclass(frozen=True)
class Preprocessing:
    """A checked spec: what the readers need from it."""

    family: str                   # "xclip" or "evl"
    num_frames: int               # T
    crop: int                     # S: the model's input is S x S
    resize_short_side: int        # EVL: S (3 crops need exactly S); X-CLIP: int(256/224*S) for 1 crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stride: int = 0               # EVL: frame index stride (0 for X-CLIP)
    views: str | None = None      # the spec's default views ("NxM"), None when it states none


def _whole(spec: dict, key: str, low: int = 1) -> int:
    value = spec.get(key)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value) or value < low):
        raise ValueError(f"preprocessing[{key!r}] must be a whole number >= {low}, got {value!r}")
    return int(value)


def _triple(spec: dict, key: str, positive: bool) -> tuple[float, float, float]:
    value = spec.get(key)
    try:
        out = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(x) and (x > 0 or not positive) for x in out):
        need = "3 finite numbers > 0" if positive else "3 finite numbers"
        raise ValueError(f"preprocessing[{key!r}] must be {need} (one per RGB channel), got {value!r}")
    return out


def _expect(spec: dict, key: str, allowed: tuple) -> None:
    if key in spec and spec[key] not in allowed:
        raise ValueError(f"preprocessing[{key!r}] is {spec[key]!r}; this reader implements only "
                         f"{' or '.join(repr(a) for a in allowed)}")


def parse_preprocessing(spec) -> Preprocessing:
    """Check a spec dict and return what the readers use; ``ValueError`` naming the bad key."""
    if isinstance(spec, Preprocessing):
        return spec
    if not isinstance(spec, dict):
        raise ValueError(f"preprocessing must be a dict (e.g. evl_preprocessing(8, 16)), got {type(spec).__name__}")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise ValueError(f"preprocessing has unknown keys {unknown}; known keys: {sorted(_KEYS)}")
    sampling = spec.get("sampling")
    family = spec.get("family", "xclip" if sampling == "tsn-center" else None)
    if family not in ("xclip", "evl"):
        raise ValueError(f"preprocessing['family'] must be 'xclip' or 'evl', got {spec.get('family')!r}")
    views = spec.get("views")
    if views is not None:
        try:
            parse_views(views)
        except ValueError as e:
            raise ValueError(f"preprocessing['views']: {e}") from None
    num_frames, crop = _whole(spec, "num_frames"), _whole(spec, "crop")
    short = _whole(spec, "resize_short_side")
    mean, std = _triple(spec, "mean", False), _triple(spec, "std", True)
    _expect(spec, "color", ("RGB",))
    if family == "evl":
        if sampling != "stride":
            raise ValueError(f"preprocessing['sampling'] for EVL must be 'stride', got {sampling!r}")
        stride = _whole(spec, "stride")
        if short < crop:
            raise ValueError(f"preprocessing['resize_short_side'] ({short}) must be >= preprocessing['crop'] "
                             f"({crop})")
        if spec.get("input_range") != "0..1":
            raise ValueError(f"preprocessing['input_range'] for EVL must be '0..1', got {spec.get('input_range')!r}")
        _expect(spec, "resize_rounding", ("floor",))
        _expect(spec, "three_crop_order", ("start, middle, end",))
        _expect(spec, "interpolation", (EVL_INTERPOLATION,))
        return Preprocessing("evl", num_frames, crop, short, mean, std, stride, views)
    # X-CLIP: one rule is implemented (engine.video.transforms); a spec saying otherwise is refused
    from ..config import IMAGE_MEAN, IMAGE_STD

    if sampling != "tsn-center":
        raise ValueError(f"preprocessing['sampling'] for X-CLIP must be 'tsn-center', got {sampling!r}")
    if "stride" in spec:
        raise ValueError("preprocessing['stride'] is an EVL field; X-CLIP samples with the TSN rule")
    if short != int(256 / 224 * crop):
        raise ValueError(f"preprocessing['resize_short_side'] for X-CLIP must be int(256 / 224 * crop) = "
                         f"{int(256 / 224 * crop)}, got {short}")
    if spec.get("input_range", "0..255") != "0..255" or mean != IMAGE_MEAN or std != IMAGE_STD:
        raise ValueError("preprocessing for X-CLIP must use input_range '0..255' and its ImageNet mean/std "
                         f"{list(IMAGE_MEAN)} / {list(IMAGE_STD)} (engine.config.xclip_preprocessing)")
    return Preprocessing("xclip", num_frames, crop, short, mean, std, 0, views)


def is_evl(spec) -> bool:
    """True when ``spec`` (a dict or None) asks for EVL's preprocessing."""
    return spec is not None and parse_preprocessing(spec).family == "evl"


def resolve(preprocessing, num_frames, size, views):
    """(spec, num_frames, size, views) for a reader given a spec: `num_frames` and `size`, if given,
    must be the spec's own; `views` None takes the spec's default (else "1x1")."""
    spec = parse_preprocessing(preprocessing)
    for name, given, own in (("num_frames", num_frames, spec.num_frames), ("size", size, spec.crop)):
        if given is not None and int(given) != own:
            raise ValueError(f"{name} = {given} disagrees with the preprocessing's {own}; "
                             "leave it out or pass the model's own")
    return spec, spec.num_frames, spec.crop, views if views is not None else (spec.views or "1x1")
