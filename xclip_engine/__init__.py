"""xclip-engine: video recognition with CLIP-derived models (X-CLIP, EVL).

    import xclip_engine as xe
    m = xe.load("path/to/xclip-folder")
    m.classify(["a.mp4"], ["cooking", "dancing"])
    for row in xe.infer(["videos/"], m, ["cooking", "dancing"], output="out.jsonl"): ...
"""

import os as _os

# In a source checkout the subpackages sit beside this folder (engine/, kernels/, ...), not
# inside it; setup.py maps them with package_dir. Extending __path__ makes a plain checkout on
# sys.path (e.g. `python -m pytest` from the root) resolve them the same way.
# realpath: reached through a link to this folder (scripts/gpu_check.sh), the checkout is the link's target's
_root = _os.path.dirname(_os.path.dirname(_os.path.realpath(__file__)))
if _os.path.isfile(_os.path.join(_root, "engine", "__init__.py")) and _root not in __path__:
    __path__.append(_root)

__version__ = "0.1.0"

# The public names load on first use (PEP 562), so that `import xclip_engine.train.synthetic` or
# `xclip-engine --help` does not pay for importing torch, PyAV and OpenCV.
_EXPORTS = {
    "load": "engine.api", "Model": "engine.api", "Prediction": "engine.api", "infer": "engine.pipeline",
    "CheckpointError": "engine.checkpoint", "save_model": "engine.checkpoint",
    "XCLIPConfig": "engine.config", "get_config": "engine.config", "list_models": "engine.config",
    "load_labels": "engine.io.labels",
    "VideoError": "engine.video", "read_video": "engine.video",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
