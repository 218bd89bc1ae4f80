"""The WSSS pipeline: datasets, stages (train-cls, make-cam, refine, train-seg, eval), metrics, pictures.

Submodules: ``datasets``, ``config``, ``stages``, ``metrics``, ``visualize``, ``report``, ``runner`` (demo),
``ablation`` (GCN head x GRM arms), ``control`` (the positive control of the ``context`` dataset), ``runtime``
(logging, torch.distributed, checkpoints), ``affinity_net`` (PSA's AffinityNet, optional stage ``train-aff``),
``pseudo_masks`` (background, argmax, confident regions, random-walk refinement).
"""
