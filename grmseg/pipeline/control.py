"""The positive control of a dataset where context decides: are its look-alike classes told apart only by context?

Two segmentation nets that see no context beyond their receptive field are trained on the true masks (no CAMs, no
pseudo masks): the segmentation net of the run with an ASPP of its 1x1 branch only, no image pooling and no GRM
(with the tiny backbone: a receptive field of 31 + 8 = 39 pixels). The ``pixels`` arm sees the image only; the
``labels`` arm is the same net also given the true image-level labels (:class:`grmseg.models.SegmentationNet`'s
``label_channels``). If the look-alikes need context, the first confuses them on a large share of their pixels
(half, when it guesses) and the second does not. Run by ``python -m grmseg context-control``; writes
``<run_dir>/control.json`` and ``control.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from grmseg.models.wsss import SegmentationNet
from grmseg.pipeline import runtime as rt
from grmseg.pipeline.common import open_dataset, seed_everything, stage_device, stamp_folder, to_tensor
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.datasets import IGNORE_INDEX
from grmseg.pipeline.datasets.synthetic import scene_spec
from grmseg.pipeline.metrics import SegmentationMeter, look_alike_scores
from grmseg.pipeline.stages.train_seg import predict_probabilities
from grmseg.pipeline.training import TrainingView, make_augment, train_loop

CONTROL_ARMS = ("pixels", "labels")
"""The arms of the control: the image only; the image and its true image-level labels."""


def with_label_planes(image: Tensor, labels: Tensor) -> Tensor:
    """``image [..., 3, H, W]``, ``labels [..., L]`` -> ``[..., 3 + L, H, W]``: the labels as constant planes."""
    planes = labels.to(image.dtype)[..., :, None, None].expand(*labels.shape, *image.shape[-2:])
    return torch.cat([image, planes], dim=-3)


class LabelPlanesView(TrainingView):
    """A :class:`grmseg.pipeline.training.TrainingView` whose images carry the image-level labels as extra planes
    (added after the augmentation, so crops and padding never touch them). Items ``([3 + K - 1, h, w], target)``."""

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, target = super().__getitem__(i)
        return with_label_planes(image, torch.from_numpy(self.ds[i]["labels"])), target


def build_control_net(cfg: PipelineConfig, num_classes: int, with_labels: bool) -> SegmentationNet:
    """The context-blind net of the control: ``cfg``'s segmentation backbone and head width, ASPP of the 1x1 branch
    only, no image pooling, no GRM; ``with_labels``: takes the ``num_classes - 1`` image-level labels as input."""
    return SegmentationNet(num_classes, cfg.seg_backbone_name(), cfg.width, cfg.seg_weights_path or cfg.weights_path,
                           cfg.output_stride, cfg.aspp_channels, aspp_rates=(), use_grm=False, image_pooling=False,
                           label_channels=num_classes - 1 if with_labels else 0)


def _train_arm(cfg: PipelineConfig, arm: str) -> dict[str, Any]:
    """Train and score one arm in ``cfg.run_dir`` (resumed from its epoch checkpoint; a finished arm is read back)."""
    run = Path(cfg.run_dir)
    done = run / "result.json"
    stamp_folder(cfg, "train-seg", run)
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    dev = stage_device(cfg)
    log = rt.get_logger(cfg.run_dir)
    ds = open_dataset(cfg, cfg.train_split)
    spec = scene_spec(cfg.dataset)
    seed_everything(cfg.seed + 1)
    with_labels = arm == "labels"
    model = build_control_net(cfg, ds.num_classes, with_labels).to(dev)
    log.info(f"[control] arm {arm!r}: {len(ds)} {cfg.dataset} images with their true masks, context-blind net "
             f"(no image pooling, no GRM){' given the true image-level labels' if with_labels else ''}, "
             f"{cfg.seg_epochs} epochs")
    view_cls = LabelPlanesView if with_labels else TrainingView
    view = view_cls(ds, make_augment(cfg, "seg", cfg.seg_batch), cfg.seed, "seg", mask_fn=lambda s: s["mask"])

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)

    groups = [{"params": list(model.parameters()), "lr": cfg.seg_lr}]
    model = train_loop(cfg, "model", model, view, cfg.seg_batch, cfg.seg_epochs, groups, loss_fn, dev, 1,
                       iterations=cfg.seg_iterations, settings="train-seg").eval()
    val = open_dataset(cfg, cfg.val_split)
    meter = SegmentationMeter(val.class_names)
    with torch.no_grad():
        for i in range(len(val)):
            s = val[i]
            x = to_tensor(s["image"])
            if with_labels:
                x = with_label_planes(x, torch.from_numpy(s["labels"]))
            meter.update(predict_probabilities(model, x.to(dev)).argmax(0).cpu(), s["mask"])
    summary = meter.summary()
    result = {"arm": arm, "miou": summary["miou"], "iou": summary["iou"], "confusion": summary["confusion"],
              "look_alikes": [look_alike_scores(meter.conf, val.class_names, pair) for pair in spec.look_alikes],
              "split": cfg.val_split, "images": len(val)}
    tmp = done.with_name(f".result.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, done)
    return result


def control_table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of :func:`run_context_control`'s arms: mIoU, and per look-alike pair its IoUs and the share
    of its pixels given the other class."""
    first = next(iter(results.values()))
    pairs = [p["pair"] for p in first["look_alikes"]]
    head = "| context-blind net, trained on the true masks | mIoU | " + " | ".join(
        f"{a} IoU | {b} IoU | {a} <-> {b} confused" for a, b in pairs) + " |"
    lines = [head, "|---|---:|" + "---:|---:|---:|" * len(pairs)]
    what = {"pixels": "the image only", "labels": "the image + its true image-level labels"}
    for arm, r in results.items():
        cells = []
        for p in r["look_alikes"]:
            a, b = p["pair"]
            cells += [f"{100 * (p['iou'][a] or 0):.1f}", f"{100 * (p['iou'][b] or 0):.1f}",
                      f"**{100 * p['confusion']:.1f} %**"]
        lines.append(f"| {what.get(arm, arm)} | {100 * r['miou']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_context_control(cfg: PipelineConfig) -> dict[str, Any]:
    """The positive control of a built-in dataset with look-alike classes (``context``): both arms of
    :data:`CONTROL_ARMS` under ``<run_dir>/<arm>/``, trained with ``cfg``'s segmentation settings (``seg_epochs``,
    ``seg_batch``, ``seg_lr``, ``seg_crop_size``) on the true masks of ``train_split``, scored on ``val_split``.

    Returns:
        ``{"arms": {arm: {"miou", "iou", "confusion", "look_alikes": [look_alike_scores...], ...}}, "table": str}``;
        also written to ``<run_dir>/control.json`` and ``control.md``.
    """
    spec = scene_spec(cfg.dataset) if cfg.builtin_dataset() else None
    if spec is None or not spec.look_alikes:
        raise ValueError(f"context-control: dataset must be a built-in one with look-alike classes (context), got "
                         f"{cfg.dataset!r}")
    base = Path(cfg.run_dir)
    blind = cfg.replace(use_grm=False, aspp_pooling=False)  # what the control net is (its settings stamp)
    results = {arm: _train_arm(blind.replace(run_dir=str(base / arm)), arm) for arm in CONTROL_ARMS}
    table = control_table(results)
    if rt.is_main():
        base.mkdir(parents=True, exist_ok=True)
        (base / "control.json").write_text(json.dumps({"arms": results}, indent=1) + "\n", encoding="utf-8")
        (base / "control.md").write_text(
            f"# Positive control on the {cfg.dataset} dataset (seed {cfg.seed}; {cfg.val_split}, "
            f"{next(iter(results.values()))['images']} images)\n\n{table}\n", encoding="utf-8")
    rt.get_logger(cfg.run_dir).info(f"\n[control] {cfg.dataset}, seed {cfg.seed}:\n{table}")
    return {"arms": results, "table": table}

