"""Models that use grmseg layers."""

from grmseg.models.deeplab import add_grm_to_deeplabv3, deeplabv3_with_grm

__all__ = ["add_grm_to_deeplabv3", "deeplabv3_with_grm"]
