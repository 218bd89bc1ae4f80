"""grmseg: knowledge-graph reasoning for weakly supervised semantic segmentation."""

from grmseg import ops, reference
from grmseg._ext import build_summary
from grmseg._version import __version__
from grmseg.nn import GRM
from grmseg.ops import backends

__all__ = ["GRM", "__version__", "backends", "build_summary", "ops", "reference"]
