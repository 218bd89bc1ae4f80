"""Stage 3 (``aff_source: irn``), ``train-irn``: IRN's boundary network from the confident CAM regions.

Targets: the confident regions of each image's full-size CAMs (foreground where the top CAM exceeds ``conf_fg``,
background where every CAM is below ``conf_bg``, the rest ignored; IRN 0.30 / 0.05), refined by IRN's dense CRF
(``conf_crf``) and written once to ``<run>/ir_label/`` (:mod:`grmseg.pipeline.confident_regions`); augmented with
the image (rescale, flip, crop ``irn_crop_size``) and read at the centres of the stride-4 cells. The net's boundary
probabilities give, for every pair within ``irn_radius`` (IRN: 10), the path affinity ``1 - max`` of the
boundary along IRN's path (:func:`grmseg.reference.boundary_affinity`, differentiable); IRN's loss pulls
same-label pairs to 1 and different-label pairs to 0. The backbone is frozen (IRN): it starts from the trained
classifier's (``irn_init: classifier``) or from ``weights_path`` (``irn_init: weights_path``, IRN's ImageNet
ResNet-50). Writes ``<run>/irn/model.pt``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from grmseg import reference
from grmseg.models.irn import GRID_STRIDE, BoundaryNet
from grmseg.pipeline.affinity_net import pair_loss
from grmseg.pipeline.common import (
    MaskFolder,
    backbone_state,
    begin_training_stage,
    load_stage_model,
    open_dataset,
    require_inputs,
    save_stage_model,
    seed_everything,
)
from grmseg.pipeline.confident_regions import write_confident_regions
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.training import TrainingView, make_augment, train_loop

IRN_INITS = ("classifier", "weights_path")


def build_boundary_net(cfg: PipelineConfig) -> BoundaryNet:
    """The boundary net of ``cfg`` (random heads; the backbone from ``weights_path`` when ``irn_init`` says so)."""
    if cfg.irn_init not in IRN_INITS:
        raise ValueError(f"config key 'irn_init' must be one of {list(IRN_INITS)}, got {cfg.irn_init!r}")
    if cfg.irn_init == "weights_path" and cfg.weights_path is None:
        raise ValueError("irn_init: weights_path needs --weights-path (IRN's ImageNet ResNet weights)")
    weights = cfg.weights_path if cfg.irn_init == "weights_path" else None
    return BoundaryNet(cfg.backbone, cfg.width, weights, cfg.output_stride, freeze_backbone=cfg.irn_freeze_backbone)


def check_grid(cfg: PipelineConfig) -> None:
    """ValueError unless the CAM grid is the boundary net's (stride 4)."""
    if cfg.cam_stride != GRID_STRIDE:
        raise ValueError(f"aff_source irn: the boundary map is on the stride-{GRID_STRIDE} grid; set cam_stride "
                         f"{GRID_STRIDE} (got {cfg.cam_stride})")


def boundary_loss(radius: int):
    """``(logits [B, 1, h, w], labels [B, h, w]) -> loss``: IRN's pair loss on the path affinities."""
    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        aff = reference.boundary_affinity(torch.sigmoid(logits.float()), radius)
        return pair_loss(aff, labels, radius)[0]
    return loss


def train_irn(cfg: PipelineConfig) -> Path:
    """Train the boundary net on the CAMs of ``train_split`` (run make-cam on it first). Returns its model path."""
    final = Path(cfg.run_dir) / "irn" / "model.pt"
    dev, world, log, done = begin_training_stage(cfg, "train-irn", final)
    if done:
        return final
    check_grid(cfg)
    ds = open_dataset(cfg, cfg.train_split)
    cams = Path(cfg.run_dir) / "cams"
    require_inputs("train-irn", cams, ds.ids, ".npz", "CAM file(s)", "run make-cam with cam_split = train_split")
    regions = write_confident_regions(cfg, ds, cams, Path(cfg.run_dir) / "ir_label")
    seed_everything(cfg.seed + 3)
    model = build_boundary_net(cfg)
    cls_path = Path(cfg.run_dir) / "cls" / "model.pt"
    if cfg.irn_init == "classifier":
        if not cls_path.is_file():
            raise FileNotFoundError(f"train-irn: no trained classifier at {str(cls_path)!r} to start the backbone "
                                    "from: run train-cls first (or irn_init: weights_path)")
        model.backbone.load_state_dict(backbone_state(cls_path))
    model = model.to(dev)
    log.info(f"[train-irn] boundary net on {len(ds)} images (confident fg > {cfg.conf_fg}, bg < {cfg.conf_bg}; "
             f"pairs within radius {cfg.irn_radius}; backbone {'frozen' if cfg.irn_freeze_backbone else 'trained'}, from "
             f"the {cfg.irn_init})")
    view = TrainingView(ds, make_augment(cfg, "irn", cfg.irn_batch), cfg.seed, "irn",
                        mask_fn=MaskFolder(regions, ds.num_classes), label_stride=model.output_stride)
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    groups = [{"params": heads, "lr": cfg.irn_lr}]
    if not cfg.irn_freeze_backbone:
        groups.append({"params": list(model.backbone.parameters()), "lr": cfg.irn_lr * cfg.irn_backbone_lr})
    core = train_loop(cfg, "irn", model, view, cfg.irn_batch, cfg.irn_epochs, groups, boundary_loss(cfg.irn_radius),
                      dev, world, settings="train-irn")
    save_stage_model(cfg, "train-irn", final, core)
    return final


def load_boundary_net(cfg: PipelineConfig, dev: torch.device) -> BoundaryNet:
    """The trained boundary net of the run (eval mode)."""
    ckpt = load_stage_model(Path(cfg.run_dir) / "irn" / "model.pt", "boundary net",
                            "run train-irn first (or use aff_source affnet / classifier)")
    model = BoundaryNet(cfg.backbone, cfg.width, None, cfg.output_stride, freeze_backbone=cfg.irn_freeze_backbone)
    model.load_state_dict(ckpt["model"])
    return model.to(dev).eval()
