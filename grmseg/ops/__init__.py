"""The op layer: one public function per op, backend selection, autograd and ``torch.library`` registration.

Callers (``grmseg.nn``, the pipeline, users) call these functions; the backend (``reference``, ``triton``,
``csrc``) is picked per device at run time, forced by ``backend=`` or ``$GRMSEG_BACKEND``. See
:func:`backends` for what this machine offers.
"""

from grmseg.ops._backends import BACKEND_NAMES, BackendStatus, backends, joint_backend, keeps_assignment, selected
from grmseg.ops.affinity import boundary_affinity, local_affinity, random_walk
from grmseg.ops.cam import cam
from grmseg.ops.crf import dense_crf
from grmseg.ops.graph import graph_conv
from grmseg.ops.grm import grm_project, grm_project_tee, grm_reproject, joint_link
from grmseg.reference import affinity_offsets

__all__ = [
    "BACKEND_NAMES",
    "BackendStatus",
    "affinity_offsets",
    "backends",
    "boundary_affinity",
    "cam",
    "dense_crf",
    "graph_conv",
    "grm_project",
    "grm_project_tee",
    "grm_reproject",
    "joint_backend",
    "joint_link",
    "keeps_assignment",
    "local_affinity",
    "random_walk",
    "selected",
]
