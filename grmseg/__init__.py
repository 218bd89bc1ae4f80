"""grmseg: knowledge-graph reasoning for weakly supervised semantic segmentation."""

from grmseg import ops, reference
from grmseg.ops import backends

__version__ = "0.1.0"
__all__ = ["__version__", "backends", "ops", "reference"]
