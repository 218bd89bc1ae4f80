"""Stage 1, ``train-cls``: the multi-label classifier (+ knowledge GCN head), and optionally ReCAM's re-activation.

Writes ``<run>/cls/model.pt`` (the classifier, with ReCAM's predictor when ``cam_method: recam``),
``<run>/cls/train_labels.npy`` (the image-level labels the knowledge graph is built from), epoch checkpoints in
``<run>/cls/`` and ``<run>/recam/``.

Loss: multilabel soft margin on the 1x1 classifier, plus ``gcn_loss_weight`` x the GCN branch's loss (the
paper's code: 1e-4 x focal with gamma 2). ReCAM (Chen et al., CVPR 2022) then trains ``recam_epochs`` more with
``recam_loss_weight`` x its softmax cross-entropy on CAM-weighted features, the classifier at 0.1 x ``recam_lr``
and the predictor at ``recam_lr``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from grmseg.models.wsss import MultiLabelClassifier, ReCAMHead
from grmseg.nn import multilabel_focal_loss
from grmseg.pipeline import runtime as rt
from grmseg.pipeline.common import (
    begin_training_stage,
    class_name_embeddings,
    knowledge_graph,
    load_stage_model,
    open_dataset,
    save_stage_model,
    seed_everything,
)
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.training import TrainingView, make_augment, train_loop

CAM_METHODS = ("cam", "recam")
GCN_LOSSES = ("focal", "soft_margin")


def build_classifier(cfg: PipelineConfig, class_names: list[str], labels: np.ndarray,
                     load_weights: bool = True) -> MultiLabelClassifier:
    """The classifier of ``cfg`` for ``class_names`` (background first); ``labels`` ``[N, K-1]`` make the graph;
    ``load_weights``: start the backbone from ``weights_path`` (False when a trained state follows)."""
    if cfg.cam_method not in CAM_METHODS:
        raise ValueError(f"config key 'cam_method' must be one of {list(CAM_METHODS)}, got {cfg.cam_method!r}")
    emb = adj = None
    if cfg.use_gcn:
        emb = class_name_embeddings(class_names[1:])
        adj = knowledge_graph(cfg.graph, emb, labels)
    weights = cfg.weights_path if load_weights else None
    return MultiLabelClassifier(len(class_names) - 1, cfg.backbone, cfg.width, weights, cfg.output_stride,
                                embeddings=emb, adjacency=adj, gcn_hidden=cfg.gcn_hidden, cam_source=cfg.cam_source,
                                recam=cfg.cam_method == "recam")


def classifier_loss(cfg: PipelineConfig, seen: np.ndarray | None = None) -> Any:
    """``(outputs, labels [B, K-1]) -> loss``: soft margin + ``gcn_loss_weight`` x the GCN branch's loss
    (+ ``recam_loss_weight`` x ReCAM's cross-entropy when the outputs hold ReCAM logits).

    ``seen``: bool ``[K-1]``, the classes labelled at least once in the training set; the per-class means run
    over those only. On a dataset where every class occurs (VOC, COCO) this is the usual loss; a dataset using
    a few of its label space's classes (the synthetic scenes in VOC's 20) trains as fast as with just those.
    """
    if cfg.gcn_loss not in GCN_LOSSES:
        raise ValueError(f"config key 'gcn_loss' must be one of {list(GCN_LOSSES)}, got {cfg.gcn_loss!r}")
    keep = None if seen is None or bool(np.all(seen)) else torch.from_numpy(np.flatnonzero(seen))

    def loss(out: dict[str, Tensor], y: Tensor) -> Tensor:
        logits, g = out["logits"], out["gcn_logits"]
        if keep is not None:
            idx = keep.to(y.device)
            logits, y_seen = logits[:, idx], y[:, idx]
            g = None if g is None else g[:, idx]
        else:
            y_seen = y
        val = F.multilabel_soft_margin_loss(logits, y_seen)
        if g is not None and cfg.gcn_loss_weight:
            branch = multilabel_focal_loss(g, y_seen, cfg.focal_gamma) if cfg.gcn_loss == "focal" else \
                F.multilabel_soft_margin_loss(g, y_seen)
            val = val + cfg.gcn_loss_weight * branch
        if out.get("recam_logits") is not None:
            val = val + cfg.recam_loss_weight * ReCAMHead.loss(out["recam_logits"], y)
        return val
    return loss


def _groups(model: MultiLabelClassifier, backbone_lr: float, head_lr: float, recam_lr: float | None = None
            ) -> list[dict[str, Any]]:
    backbone = list(model.backbone.parameters())
    recam = [] if model.recam is None else list(model.recam.parameters())
    skip = {id(p) for p in backbone + recam}
    rest = [p for p in model.parameters() if id(p) not in skip and p.requires_grad]
    groups = [{"params": backbone, "lr": backbone_lr}, {"params": rest, "lr": head_lr}]
    if recam_lr is not None:
        groups.append({"params": recam, "lr": recam_lr})
    return groups


def train_cls(cfg: PipelineConfig) -> Path:
    """Train the classifier (and ReCAM with ``cam_method: recam``). Returns ``<run>/cls/model.pt``."""
    final = Path(cfg.run_dir) / "cls" / "model.pt"
    dev, world, log, done = begin_training_stage(cfg, "train-cls", final)
    if done:
        return final
    ds = open_dataset(cfg, cfg.train_split)
    labels = ds.image_labels()
    if rt.is_main():
        final.parent.mkdir(parents=True, exist_ok=True)
        np.save(final.parent / "train_labels.npy", labels)
    seed_everything(cfg.seed)
    model = build_classifier(cfg, ds.class_names, labels).to(dev)
    if model.recam is not None:
        model.recam.requires_grad_(False)
    log.info(f"[train-cls] {ds.name} {cfg.train_split}: {len(ds)} images, {ds.num_classes - 1} classes; backbone "
             f"{cfg.backbone}, knowledge GCN head {'on (' + cfg.graph + ' graph)' if cfg.use_gcn else 'off'}; "
             f"CAMs by {cfg.cam_method}")
    view = TrainingView(ds, make_augment(cfg, "cls", cfg.cls_batch), cfg.seed, "cls")
    seen = labels.any(axis=0)
    if not seen.all():
        names = [n for n, k in zip(ds.class_names[1:], seen) if not k]
        log.info(f"[train-cls] {len(names)} of {len(seen)} classes never occur in {cfg.train_split} (e.g. {names[:4]}): "
                 "the loss averages over the others")
    loss = classifier_loss(cfg, seen)
    bb_lr = cfg.cls_lr * (0.1 if cfg.weights_path else 1.0)
    core = train_loop(cfg, "cls", model, view, cfg.cls_batch, cfg.cls_epochs, _groups(model, bb_lr, cfg.cls_lr), loss,
                      dev, world, settings="train-cls")
    if core.recam is not None:
        core.recam.requires_grad_(True)
        core.use_recam = True
        log.info(f"[train-cls] ReCAM: {cfg.recam_epochs} epochs, loss weight {cfg.recam_loss_weight}")
        low = 0.1 * cfg.recam_lr
        batch = cfg.recam_batch or cfg.cls_batch
        core = train_loop(cfg, "recam", core, TrainingView(ds, make_augment(cfg, "cls", batch), cfg.seed, "recam"), batch,
                          cfg.recam_epochs, _groups(core, low, low, cfg.recam_lr), loss, dev, world,
                          settings="train-cls")
    save_stage_model(cfg, "train-cls", final, core, class_names=ds.class_names)
    return final


def load_classifier(cfg: PipelineConfig, dev: torch.device) -> tuple[MultiLabelClassifier, list[str]]:
    """The trained classifier of the run (eval mode; ReCAM's predictor in use when trained) and its class names."""
    path = Path(cfg.run_dir) / "cls" / "model.pt"
    ckpt = load_stage_model(path, "classifier", "run train-cls first")
    labels = np.load(path.parent / "train_labels.npy")
    model = build_classifier(cfg, ckpt["class_names"], labels, load_weights=False)
    model.load_state_dict(ckpt["model"])
    model.use_recam = model.recam is not None
    return model.to(dev).eval(), ckpt["class_names"]
