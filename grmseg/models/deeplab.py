"""GRM inside torchvision's DeepLabV3: after the ASPP head, before the final 1x1 classifier."""

from __future__ import annotations

from typing import Any

from torch import nn

from grmseg._optional import optional_import
from grmseg.nn.grm import GRM


def add_grm_to_deeplabv3(model: nn.Module, num_nodes: int | None = None, **grm_kwargs: Any) -> nn.Module:
    """Insert a :class:`grmseg.GRM` before the last 1x1 conv of a torchvision DeepLabV3 head, in place.

    Args:
        model: a ``torchvision.models.segmentation.DeepLabV3`` (its ``classifier`` is a ``DeepLabHead``:
            ASPP, 3x3 conv, BN, ReLU, 1x1 conv).
        num_nodes: K class nodes; defaults to the number of output classes of the head.
        **grm_kwargs: passed to :class:`grmseg.GRM` (``embeddings``, ``adjacency``, ``node_dim``, ...).

    Returns:
        ``model`` with ``model.classifier = Sequential(ASPP, conv, BN, ReLU, GRM, 1x1 conv)``.
    """
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Sequential) or not isinstance(head[-1], nn.Conv2d):
        raise TypeError("add_grm_to_deeplabv3: model.classifier must be a torchvision DeepLabHead "
                        f"(nn.Sequential ending in a 1x1 nn.Conv2d), got {type(head).__name__}")
    if any(isinstance(m, GRM) for m in head):
        raise ValueError("add_grm_to_deeplabv3: the head already holds a GRM")
    final = head[-1]
    grm = GRM(final.in_channels, num_nodes or final.out_channels, **grm_kwargs)
    model.classifier = nn.Sequential(*list(head)[:-1], grm, final)
    return model


def deeplabv3_with_grm(num_classes: int = 21, backbone: str = "resnet50", weights_path: str | None = None,
                       **grm_kwargs: Any) -> nn.Module:
    """A torchvision DeepLabV3 (random init, or a state dict from ``weights_path``) with a GRM in its head.

    Args:
        num_classes: output classes (and GRM nodes unless ``num_nodes`` is given).
        backbone: ``"resnet50"`` or ``"resnet101"``.
        weights_path: optional path to a ``state_dict`` saved from this same architecture.
        **grm_kwargs: passed to :func:`add_grm_to_deeplabv3`.

    Returns:
        the model; pretrained weights are never downloaded.
    """
    import torch
    segmentation = optional_import("torchvision.models.segmentation", "deeplabv3_with_grm")

    builders = {"resnet50": segmentation.deeplabv3_resnet50, "resnet101": segmentation.deeplabv3_resnet101}
    if backbone not in builders:
        raise ValueError(f"deeplabv3_with_grm: backbone must be one of {sorted(builders)}, got {backbone!r}")
    model = builders[backbone](weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    model = add_grm_to_deeplabv3(model, **grm_kwargs)
    if weights_path is not None:
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model
