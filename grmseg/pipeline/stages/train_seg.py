"""Stage 5, ``train-seg``: the segmentation net (GRM on or off) on the pseudo masks.

DeepLab-style net with GRM after the ASPP head (:class:`grmseg.models.SegmentationNet`), trained with
cross-entropy (pseudo-mask label 255 and crop padding ignored) on random rescale + flip + ``seg_crop_size`` crops;
``seg_epochs`` epochs or ``seg_iterations`` SGD steps (DeepLab: 20k). Writes ``<run>/seg/model.pt``
(``<run>/seg_nogrm/`` without GRM, ``<run>/seg_grm_<graph>[_noemb]/`` with a GRM graph other than the classifier's
or without class-name embeddings: :func:`seg_dir`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from grmseg.models.wsss import SegmentationNet
from grmseg.pipeline.common import (
    MaskFolder,
    backbone_state,
    begin_training_stage,
    class_name_embeddings,
    knowledge_graph,
    load_stage_model,
    open_dataset,
    require_inputs,
    save_stage_model,
    seed_everything,
)
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.datasets import IGNORE_INDEX
from grmseg.pipeline.training import TrainingView, make_augment, train_loop


def build_segmenter(cfg: PipelineConfig, class_names: list[str], labels: np.ndarray,
                    load_weights: bool = True) -> SegmentationNet:
    """The segmentation net of ``cfg``; the GRM nodes are the K classes (background first)."""
    emb = adj = None
    if cfg.use_grm:
        full = class_name_embeddings(class_names)
        emb = full if cfg.grm_embeddings else None
        with_bg = np.concatenate([np.ones((labels.shape[0], 1), np.float32), labels], axis=1)
        adj = knowledge_graph(cfg.grm_graph_name(), full, with_bg)
    weights = (cfg.seg_weights_path or cfg.weights_path) if load_weights else None
    return SegmentationNet(len(class_names), cfg.seg_backbone_name(), cfg.width, weights, cfg.output_stride,
                           cfg.aspp_channels, cfg.aspp_rates, cfg.use_grm, emb, adj, cfg.grm_node_dim,
                           cfg.grm_key_dim, cfg.grm_gcn_layers, image_pooling=cfg.aspp_pooling)


def _default_grm(cfg: PipelineConfig) -> bool:
    return cfg.grm_graph_name() == cfg.graph and cfg.grm_embeddings


def _variant(cfg: PipelineConfig) -> tuple[str, str]:
    """(run sub-folder, name in the results) of the segmentation net of ``cfg``."""
    if not cfg.use_grm:
        folder, name = "seg_nogrm", "no GRM"
    elif _default_grm(cfg):
        folder, name = "seg", "GRM"
    else:
        emb = "" if cfg.grm_embeddings else "_noemb"
        folder = f"seg_grm_{cfg.grm_graph_name()}{emb}"
        name = f"GRM, graph {cfg.grm_graph_name()}{', no embeddings' if emb else ''}"
    if not cfg.aspp_pooling:
        folder, name = folder + "_nopool", name + ", no ASPP pooling"
    return folder, f"segmentation ({name})"


def seg_dir(cfg: PipelineConfig) -> str:
    """The run sub-folder of the segmentation net: ``seg`` (GRM on, on the classifier's graph, with the class-name
    embeddings), ``seg_nogrm`` (GRM off), else ``seg_grm_<grm graph>`` (+ ``_noemb`` without embeddings); each
    + ``_nopool`` without the ASPP's image pooling."""
    return _variant(cfg)[0]


def seg_label(cfg: PipelineConfig) -> str:
    """The name of the segmentation net in the results: ``segmentation (GRM)``, ``segmentation (no GRM)``, or e.g.
    ``segmentation (GRM, graph none, no embeddings)``, ``segmentation (no GRM, no ASPP pooling)``."""
    return _variant(cfg)[1]


def train_seg(cfg: PipelineConfig) -> Path:
    """Train the segmentation net on the pseudo masks of ``train_split``. Returns its model path."""
    stage = seg_dir(cfg)
    final = Path(cfg.run_dir) / stage / "model.pt"
    dev, world, log, done = begin_training_stage(cfg, "train-seg", final)
    if done:
        return final
    ds = open_dataset(cfg, cfg.train_split)
    pseudo = Path(cfg.run_dir) / "pseudo"
    require_inputs("train-seg", pseudo, ds.ids, ".png", "pseudo mask(s)",
                   "run make-cam and refine on the training split (cam_split)")
    labels_path = Path(cfg.run_dir) / "cls" / "train_labels.npy"
    labels = np.load(labels_path) if labels_path.is_file() else ds.image_labels()
    seed_everything(cfg.seed + 1)
    model = build_segmenter(cfg, ds.class_names, labels)
    cls_path = Path(cfg.run_dir) / "cls" / "model.pt"
    if (cfg.seg_init_from_cls and cfg.seg_backbone_name() == cfg.backbone and cls_path.is_file()
            and not (final.parent / "checkpoint.pt").is_file()):
        model.backbone.load_state_dict(backbone_state(cls_path))
        log.info("[train-seg] backbone initialised from the trained classifier")
    model = model.to(dev)
    how = f"{cfg.seg_iterations} iterations" if cfg.seg_iterations > 0 else f"{cfg.seg_epochs} epochs"
    variant = "" if seg_dir(cfg) in ("seg", "seg_nogrm") else f" ({seg_label(cfg)})"
    log.info(f"[train-seg] {len(ds)} images with pseudo masks; backbone {cfg.seg_backbone_name()}, GRM "
             f"{'on' if cfg.use_grm else 'off'}; {how}{variant}")

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)

    view = TrainingView(ds, make_augment(cfg, "seg", cfg.seg_batch), cfg.seed, "seg",
                        mask_fn=MaskFolder(pseudo, ds.num_classes))
    backbone = list(model.backbone.parameters())
    skip = {id(p) for p in backbone}
    pretrained = bool(cfg.seg_weights_path or cfg.weights_path)  # ImageNet (or COCO) weights: backbone at 0.1 x
    groups = [{"params": backbone, "lr": cfg.seg_lr * (0.1 if pretrained else 1.0)},
              {"params": [p for p in model.parameters() if id(p) not in skip], "lr": cfg.seg_lr}]
    core = train_loop(cfg, stage, model, view, cfg.seg_batch, cfg.seg_epochs, groups, loss_fn, dev, world,
                      iterations=cfg.seg_iterations, settings="train-seg")
    save_stage_model(cfg, "train-seg", final, core, class_names=ds.class_names)
    return final


def load_segmenter(cfg: PipelineConfig, dev: torch.device) -> SegmentationNet:
    """The trained segmentation net of the run (eval mode)."""
    ckpt = load_stage_model(Path(cfg.run_dir) / seg_dir(cfg) / "model.pt", "segmentation net", "run train-seg first")
    labels_path = Path(cfg.run_dir) / "cls" / "train_labels.npy"
    labels = np.load(labels_path) if labels_path.is_file() else np.ones((1, len(ckpt["class_names"]) - 1), np.float32)
    model = build_segmenter(cfg, ckpt["class_names"], labels, load_weights=False)
    model.load_state_dict(ckpt["model"])
    return model.to(dev).eval()


@torch.no_grad()
def predict_probabilities(model: SegmentationNet, image: Tensor, flip: bool = True) -> Tensor:
    """``[3, H, W]`` normalised -> ``[K, H, W]`` class probabilities (softmax averaged with the mirrored image)."""
    x = image[None]
    if flip:
        x = torch.cat([x, x.flip(-1)])
    p = model(x).softmax(1)
    return (p[0] + p[1].flip(-1)) / 2 if flip else p[0]


def predict(model: SegmentationNet, image: Tensor, flip: bool = True) -> np.ndarray:
    """``[3, H, W]`` normalised -> uint8 ``[H, W]`` class map (the argmax of :func:`predict_probabilities`)."""
    return predict_probabilities(model, image, flip).argmax(0).cpu().numpy().astype(np.uint8)
