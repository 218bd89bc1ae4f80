"""Stage 2, ``make-cam``: multi-scale + flip CAMs of ``cam_split`` -> ``<run>/cams/<id>.npz``.

As IRN / ReCAM: raw ReLU class maps summed over scales and mirrors, divided by the per-class maximum + 1e-5, for
the classes of the image; stored on the stride-``cam_stride`` grid (``cam``, IRN's stride 4) and on the pixels
(``high_res``), both on the exact geometry of :mod:`grmseg.geometry`. File format: :mod:`grmseg.pipeline.common`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from grmseg.models.wsss import MultiLabelClassifier
from grmseg.pipeline import pseudo_masks as pm
from grmseg.pipeline import runtime as rt
from grmseg.pipeline.cam_aggregation import multiscale_cams
from grmseg.pipeline.common import (
    files_to_write,
    load_cam,
    open_dataset,
    record_settings,
    save_cam,
    stage_device,
    stamp_folder,
    to_tensor,
)
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.stages.train_cls import load_classifier


@torch.no_grad()
def multiscale_cam(model: MultiLabelClassifier, image: Tensor, labels: Tensor, scales: tuple[float, ...],
                   flip: bool = True, cam_stride: int = 4) -> tuple[Tensor, Tensor]:
    """Multi-scale (+ flip) CAMs of one image (:func:`grmseg.pipeline.cam_aggregation.multiscale_cams`).

    Args:
        model: the classifier.  image: ``[3, H, W]`` normalised.  labels: ``[K-1]`` multi-hot.
        scales: image scales.  flip: add the mirrored images.  cam_stride: the grid of the first output.

    Returns:
        ``(cam [K-1, ceil(H/t), ceil(W/t)], high_res [K-1, H, W])`` with ``t = cam_stride``; absent classes zero.
    """
    grid, full = multiscale_cams(model.backbone, image[None], model.cam_weights(), model.backbone.output_stride,
                                 scales=scales, flip=flip, labels=labels[None], out_strides=(cam_stride, 1))
    return grid[0], full[0]


def make_cam(cfg: PipelineConfig) -> Path:
    """Write the CAM file of every image of ``cam_split`` not done yet. Returns the folder."""
    dev = stage_device(cfg)
    rt.init_distributed(dev)
    log = rt.get_logger(cfg.run_dir)
    model, _ = load_classifier(cfg, dev)
    ds = open_dataset(cfg, cfg.cam_split)
    out = Path(cfg.run_dir) / "cams"
    stamp_folder(cfg, "make-cam", out)
    todo = files_to_write(ds, out, ".npz", load_cam)
    t0 = time.perf_counter()
    for i in rt.progress(todo, len(todo), "make-cam", cfg.progress):
        s = ds[i]
        lab = torch.from_numpy(s["labels"])
        cam, high = multiscale_cam(model, to_tensor(s["image"]).to(dev), lab.to(dev), cfg.cam_scales, cfg.cam_flip,
                                   cfg.cam_stride)
        keys = torch.nonzero(lab).flatten().to(dev)
        save_cam(out / f"{s['id']}.npz", (keys + 1).cpu().numpy(), cam[keys].cpu().numpy(), high[keys].cpu().numpy(),
                 cfg.cam_stride)
    record_settings(cfg)
    rt.barrier()
    log.info(f"[make-cam] {len(todo)} new CAM files in {out} ({time.perf_counter() - t0:.1f} s; "
             f"scales {list(cfg.cam_scales)}, flip {cfg.cam_flip}, {cfg.cam_method})")
    return out


def cam_to_mask(cam: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """CAM file -> label map ``[H, W]``: background where every ``high_res`` CAM is below ``threshold``, else the
    argmax class (:func:`grmseg.pipeline.pseudo_masks.pseudo_masks` with IRN's constant background)."""
    high = torch.from_numpy(cam["high_res"])[None]
    keys = torch.from_numpy(cam["keys"]).long()
    return pm.pseudo_masks(high, bg_threshold=threshold, class_indices=keys)[0].numpy().astype(np.uint8)
