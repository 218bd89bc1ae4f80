"""nn.Modules built on the grmseg ops."""

from grmseg.nn.grm import GRM

__all__ = ["GRM"]
