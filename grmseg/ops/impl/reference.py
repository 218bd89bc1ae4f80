"""The reference backend: ``grmseg.reference`` run as the kernels. Always available, on every device."""

from __future__ import annotations

from grmseg import reference as _ref
from grmseg.ops._backends import KERNEL_NAMES

NAME = "reference"


def status(device_type: str) -> tuple[bool, str]:
    """The reference backend runs wherever PyTorch does."""
    return True, ""


grm_project_forward = _ref.grm_project
grm_project_backward = _ref.grm_project_backward
grm_reproject_forward = _ref.grm_reproject
grm_reproject_backward = _ref.grm_reproject_backward
grm_project_keep_forward = _ref.grm_project_keep
grm_project_backward_kept = _ref.grm_project_backward_kept
grm_reproject_keep_forward = _ref.grm_reproject_keep
grm_reproject_backward_kept = _ref.grm_reproject_backward_kept
grm_reproject_backward_kept_joint = _ref.grm_reproject_backward_kept_joint
grm_project_backward_kept_joint = _ref.grm_project_backward_kept_joint
graph_conv_forward = _ref.graph_conv
graph_conv_backward = _ref.graph_conv_backward
cam_forward = _ref.cam
local_affinity_forward = _ref.local_affinity
boundary_affinity_forward = _ref.boundary_affinity
random_walk_forward = _ref.random_walk
dense_crf_forward = _ref.dense_crf

_KERNELS = frozenset(KERNEL_NAMES)


def kernels(device_type: str) -> frozenset[str]:
    """Every kernel, on every device type."""
    return _KERNELS
