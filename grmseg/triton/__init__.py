"""Triton kernels for the GRM ops, one module per op family (kernels only, no launch policy).

The adapters that launch them, pick block sizes and reduce partial sums are ``grmseg.ops.impl.triton`` (GRM
projection, reprojection, graph convolution: re-exported here) and ``grmseg.ops.impl.triton_wsss`` (``cam``,
``affinity``, ``random_walk``); call the ops through ``grmseg.ops``. Importing this package imports triton.
"""

from grmseg.triton.graph_conv import (
    graph_conv_bwd_adj_kernel,
    graph_conv_bwd_pre_kernel,
    graph_conv_bwd_w_kernel,
    graph_conv_bwd_z_kernel,
    graph_conv_fwd_kernel,
)
from grmseg.triton.grm_project import grm_project_bwd_kernel, grm_project_fwd_kernel
from grmseg.triton.grm_reproject import grm_reproject_bwd_kernel, grm_reproject_fwd_kernel

__all__ = [
    "graph_conv_bwd_adj_kernel",
    "graph_conv_bwd_pre_kernel",
    "graph_conv_bwd_w_kernel",
    "graph_conv_bwd_z_kernel",
    "graph_conv_fwd_kernel",
    "grm_project_bwd_kernel",
    "grm_project_fwd_kernel",
    "grm_reproject_bwd_kernel",
    "grm_reproject_fwd_kernel",
]
