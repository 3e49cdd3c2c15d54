from .evl import EVL
from .ops import REFERENCE, ReferenceOps
from .xclip import XCLIP

__all__ = ["EVL", "XCLIP", "ReferenceOps", "REFERENCE", "build_model"]


def build_model(config):
    """A randomly initialised model of `config`'s family (XCLIPConfig or EVLConfig)."""
    return EVL(config) if config.family == "evl" else XCLIP(config)
