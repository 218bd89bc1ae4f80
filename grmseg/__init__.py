"""grmseg: knowledge-graph reasoning for weakly supervised semantic segmentation."""

from grmseg import ops, reference
from grmseg._ext import build_summary
from grmseg.nn import GRM
from grmseg.ops import backends

__version__ = "0.1.0"
__all__ = ["GRM", "__version__", "backends", "build_summary", "ops", "reference"]
