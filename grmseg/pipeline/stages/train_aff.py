"""Stage 3 (``aff_source: affnet``), ``train-aff``: PSA's AffinityNet from the confident CAM regions.

Targets as ``train-irn`` (``<run>/ir_label``, :mod:`grmseg.pipeline.confident_regions`), read at the cell centres of
the AffinityNet's output stride; pairs within ``aff_radius``; PSA's loss on ``exp(-mean_c |f_i - f_j|)``. The
backbone starts from the trained classifier's. Writes ``<run>/aff/model.pt``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from grmseg.pipeline.affinity_net import AffinityNet, affinity_loss
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


def train_aff(cfg: PipelineConfig) -> Path:
    """Train PSA's AffinityNet on the CAMs of ``train_split`` (run make-cam on it first). Returns its model path."""
    final = Path(cfg.run_dir) / "aff" / "model.pt"
    dev, world, log, done = begin_training_stage(cfg, "train-aff", final)
    if done:
        return final
    ds = open_dataset(cfg, cfg.train_split)
    cams = Path(cfg.run_dir) / "cams"
    require_inputs("train-aff", cams, ds.ids, ".npz", "CAM file(s)", "run make-cam with cam_split = train_split")
    regions = write_confident_regions(cfg, ds, cams, Path(cfg.run_dir) / "ir_label")
    seed_everything(cfg.seed + 2)
    model = AffinityNet(cfg.backbone, cfg.width, cfg.weights_path, cfg.output_stride, cfg.aff_dim)
    cls_path = Path(cfg.run_dir) / "cls" / "model.pt"
    if cls_path.is_file() and not (final.parent / "checkpoint.pt").is_file():
        model.backbone.load_state_dict(backbone_state(cls_path))
    model = model.to(dev)
    log.info(f"[train-aff] AffinityNet on {len(ds)} images (confident fg > {cfg.conf_fg}, bg < {cfg.conf_bg})")

    def loss_fn(feat: Tensor, y: Tensor) -> Tensor:
        return affinity_loss(feat, y, cfg.aff_radius)[0]

    view = TrainingView(ds, make_augment(cfg, "irn", cfg.cls_batch), cfg.seed, "aff",
                        mask_fn=MaskFolder(regions, ds.num_classes),
                        label_stride=model.backbone.output_stride)
    groups = [{"params": list(model.backbone.parameters()), "lr": cfg.aff_lr * 0.1},
              {"params": list(model.head.parameters()), "lr": cfg.aff_lr}]
    core = train_loop(cfg, "aff", model, view, cfg.cls_batch, cfg.aff_epochs, groups, loss_fn, dev, world,
                      settings="train-aff")
    save_stage_model(cfg, "train-aff", final, core)
    return final


def load_affinity_net(cfg: PipelineConfig, dev: torch.device) -> AffinityNet:
    """The trained AffinityNet of the run (eval mode)."""
    ckpt = load_stage_model(Path(cfg.run_dir) / "aff" / "model.pt", "AffinityNet",
                            "run train-aff first (or use aff_source irn / classifier)")
    model = AffinityNet(cfg.backbone, cfg.width, None, cfg.output_stride, cfg.aff_dim)
    model.load_state_dict(ckpt["model"])
    return model.to(dev).eval()
