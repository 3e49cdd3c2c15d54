from .ops import REFERENCE, ReferenceOps
from .xclip import XCLIP

__all__ = ["XCLIP", "ReferenceOps", "REFERENCE"]
