"""Video files -> model input: which frames (sampling), how they are read (reader: PyAV; dali:
NVIDIA DALI; decoders: which of the two reads a file), how they are preprocessed (transforms:
X-CLIP; evl_transforms: EVL; preprocessing: a model's rules as a spec dict), and windows along
long videos (timeline). Errors are `VideoError` (errors.py).

The public names below load on first use, so importing one module of this package does not pull
in PyAV and OpenCV through the others.
"""

_EXPORTS = {
    "VideoError": "errors", "TruncatedVideoWarning": "errors", "read_video": "reader",
    "read_frames": "reader", "count_frames": "reader",
    "DecodeStats": "reader", "collect_stats": "reader", "parse_views": "transforms", "read_clip": "decoders",
    "evl_preprocessing": "preprocessing", "parse_preprocessing": "preprocessing",
    "stride_indices": "sampling", "preprocess_evl": "evl_transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
