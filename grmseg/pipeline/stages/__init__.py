"""The WSSS stages, one module each, in the order they run (the paper's: ReCAM CAMs -> IRN random walk ->
DeepLab + GRM):

=============  ==========================  =======================================================
command        module                      writes under the run folder
=============  ==========================  =======================================================
train-cls      :mod:`.train_cls`           ``cls/{model.pt, train_labels.npy}`` (+ ReCAM)
make-cam       :mod:`.make_cam`            ``cams/<id>.npz``: ``cam`` (stride 4), ``high_res``
train-irn      :mod:`.train_irn`           ``irn/model.pt``: IRN's boundary net (aff_source irn)
train-aff      :mod:`.train_aff`           ``aff/model.pt``: PSA's AffinityNet (aff_source affnet)
refine         :mod:`.refine`              ``pseudo/<id>.png``: affinity + random walk
train-seg      :mod:`.train_seg`           ``seg/model.pt`` (``seg_nogrm/``, ``seg_grm_*/``: variants)
eval           :mod:`.evaluate`            ``eval/{eval.json, table.md, confusion_*.csv}``, predictions
=============  ==========================  =======================================================

Also in the run folder: ``config.json`` (the settings of the last stage that finished), ``log.txt``, epoch checkpoints
in each training stage's folder, and ``report.md`` with ``figures/examples.png`` (:mod:`grmseg.pipeline.report`).
Every stage skips the work already done (finished models, existing CAM / mask files) and resumes training from
the last epoch checkpoint; training stages run data-parallel under torchrun (DDP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.stages.evaluate import evaluate
from grmseg.pipeline.stages.make_cam import make_cam
from grmseg.pipeline.stages.refine import refine
from grmseg.pipeline.stages.train_aff import train_aff
from grmseg.pipeline.stages.train_cls import train_cls
from grmseg.pipeline.stages.train_irn import train_irn
from grmseg.pipeline.stages.train_seg import train_seg

__all__ = ["STAGES", "evaluate", "make_cam", "pipeline_stages", "refine", "train_aff", "train_cls", "train_irn",
           "train_seg"]

STAGES: dict[str, Callable[[PipelineConfig], Any]] = {
    "train-cls": train_cls,
    "make-cam": make_cam,
    "train-irn": train_irn,
    "train-aff": train_aff,
    "refine": refine,
    "train-seg": train_seg,
    "eval": evaluate,
}


def pipeline_stages(cfg: PipelineConfig) -> list[str]:
    """The stages a full run of ``cfg`` goes through, in order (the affinity net its ``aff_source`` needs)."""
    learned = {"irn": ["train-irn"], "affnet": ["train-aff"]}.get(cfg.aff_source, [])
    return ["train-cls", "make-cam", *learned, "refine", "train-seg", "eval"]
