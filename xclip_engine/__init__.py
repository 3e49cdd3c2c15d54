"""xclip-engine: X-CLIP video recognition.

    import xclip_engine as xe
    m = xe.load("path/to/xclip-folder")
    m.classify(["a.mp4"], ["cooking", "dancing"])
"""

import os as _os

# In a source checkout the subpackages sit beside this folder (engine/, kernels/, ...), not
# inside it; setup.py maps them with package_dir. Extending __path__ makes a plain checkout on
# sys.path (e.g. `python -m pytest` from the root) resolve them the same way.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "engine", "__init__.py")) and _root not in __path__:
    __path__.append(_root)

__version__ = "0.1.0"

from xclip_engine.engine.api import Model, Prediction, load  # noqa: E402
from xclip_engine.engine.checkpoint import CheckpointError, save_model  # noqa: E402
from xclip_engine.engine.config import XCLIPConfig, get_config, list_models  # noqa: E402
from xclip_engine.engine.labels import load_labels  # noqa: E402
from xclip_engine.engine.video import VideoError, read_video  # noqa: E402

__all__ = ["load", "Model", "Prediction", "list_models", "get_config", "XCLIPConfig", "read_video",
           "VideoError", "CheckpointError", "save_model", "load_labels"]
