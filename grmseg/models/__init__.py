"""Models that use grmseg layers: the WSSS classifier and segmentation net, and GRM inside DeepLabV3."""

from grmseg.models.backbones import BACKBONES, ResNetBackbone, TinyBackbone, build_backbone
from grmseg.models.deeplab import add_grm_to_deeplabv3, deeplabv3_with_grm
from grmseg.models.wsss import ASPP, MultiLabelClassifier, SegmentationNet

__all__ = [
    "ASPP",
    "BACKBONES",
    "MultiLabelClassifier",
    "ResNetBackbone",
    "SegmentationNet",
    "TinyBackbone",
    "add_grm_to_deeplabv3",
    "build_backbone",
    "deeplabv3_with_grm",
]
