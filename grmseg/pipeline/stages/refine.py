"""Stage 4, ``refine``: affinity + random walk -> pseudo masks ``<run>/pseudo/<id>.png`` (atomic writes).

All on the stride-``cam_stride`` grid of the CAM files, then upsampled by exactly that stride onto the image:

* ``aff_source: irn`` (IRN): boundary map of the trained boundary net, :func:`grmseg.ops.boundary_affinity` at
  ``aff_radius`` (5), the CAMs times ``1 - boundary`` walked with ``beta`` 10 for 256 steps, the walked scores
  upsampled and divided by their maximum, background ``bg_threshold`` (0.25), argmax.
* ``aff_source: affnet`` (PSA): :func:`grmseg.ops.local_affinity` of the AffinityNet's features.
* ``aff_source: classifier``: the same of the classifier's own features (scaled by ``aff_scale`` over their mean
  magnitude), optionally with the image colour (``aff_rgb_weight``).

``bg_mode: psa`` replaces the threshold by PSA's background ``(1 - max fg)^bg_alpha`` computed on the full-size
CAMs, pooled onto the grid with the classes and walked with them. ``refine_crf`` ends with a dense CRF of the
scores on the image (:func:`grmseg.pipeline.crf.crf_probabilities`), as PSA's ``--out_crf``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from grmseg import ops
from grmseg.geometry import resample, strided_size
from grmseg.pipeline import pseudo_masks as pm
from grmseg.pipeline import runtime as rt
from grmseg.pipeline.common import (
    files_to_write,
    load_cam,
    open_dataset,
    record_settings,
    stage_device,
    stamp_folder,
    to_rgb,
    to_tensor,
)
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.crf import crf_probabilities
from grmseg.pipeline.datasets import load_mask, save_png_atomic, voc_palette
from grmseg.pipeline.stages.train_aff import load_affinity_net
from grmseg.pipeline.stages.train_cls import load_classifier
from grmseg.pipeline.stages.train_irn import check_grid, load_boundary_net

AFF_SOURCES = ("irn", "affnet", "classifier")
BG_MODES = ("threshold", "psa")


class Refiner:
    """The refinement of ``cfg`` with its trained nets loaded once: ``refiner(image, cam) -> uint8 [H, W]``.

    Args:
        cfg: the run's config (``aff_source``, ``bg_mode``, walk settings).  dev: the device.
    """

    def __init__(self, cfg: PipelineConfig, dev: torch.device) -> None:
        if cfg.aff_source not in AFF_SOURCES:
            raise ValueError(f"config key 'aff_source' must be one of {list(AFF_SOURCES)}, got {cfg.aff_source!r}")
        if cfg.bg_mode not in BG_MODES:
            raise ValueError(f"config key 'bg_mode' must be one of {list(BG_MODES)}, got {cfg.bg_mode!r}")
        self.cfg, self.dev = cfg, dev
        self.net: torch.nn.Module
        if cfg.aff_source == "irn":
            check_grid(cfg)
            self.net = load_boundary_net(cfg, dev)
        elif cfg.aff_source == "affnet":
            self.net = load_affinity_net(cfg, dev)
        else:
            self.net = load_classifier(cfg, dev)[0].backbone

    def _features_on_grid(self, image: Tensor, stride: int) -> Tensor:
        """Affinity features of ``image [3, H, W]`` on the stride grid ``[1, C, ceil(H/s), ceil(W/s)]``."""
        cfg = self.cfg
        size = tuple(image.shape[-2:])
        feat = self.net(image[None]).float()
        feat = resample(feat, size, self.net.output_stride, stride)
        if cfg.aff_source == "classifier":
            feat = feat / (feat.abs().mean() + 1e-5) * cfg.aff_scale
        if cfg.aff_rgb_weight > 0:
            rgb = F.pad(to_rgb(image)[None], (0, -size[1] % stride, 0, -size[0] % stride), mode="replicate")
            rgb = F.avg_pool2d(rgb, stride) if stride > 1 else rgb
            feat = torch.cat([feat, rgb * cfg.aff_rgb_weight * feat.shape[1] / 3], dim=1)
        return feat

    @torch.no_grad()
    def __call__(self, image: Tensor, cam: dict[str, np.ndarray]) -> np.ndarray:
        """Pseudo mask of one image.

        Args:
            image: ``[3, H, W]`` normalised, on the device.  cam: a CAM file (:func:`grmseg.pipeline.common.load_cam`).

        Returns:
            uint8 ``[H, W]`` dataset class indices.
        """
        cfg = self.cfg
        size = tuple(image.shape[-2:])
        keys = cam["keys"]
        stride = int(cam["stride"])
        if len(keys) == 0:
            return np.zeros(size, np.uint8)
        grid = torch.from_numpy(cam["cam"]).to(self.dev)[None]
        if tuple(grid.shape[-2:]) != strided_size(size, stride):
            raise ValueError(f"refine: the CAM file's grid {tuple(grid.shape[-2:])} is not the stride-{stride} grid of "
                             f"the {size} image: run make-cam again")
        boundary = None
        if cfg.aff_source == "irn":
            boundary = self.net.boundary(image[None])
            aff = ops.boundary_affinity(boundary, cfg.aff_radius)
        else:
            aff = ops.local_affinity(self._features_on_grid(image, stride), cfg.aff_radius)
        if cfg.bg_mode == "threshold":
            scores = pm.propagate(grid, aff, beta=cfg.rw_beta, steps=cfg.rw_steps, bg_threshold=cfg.bg_threshold,
                                  boundary=boundary, stride=stride, image_size=size)
        else:
            full = torch.from_numpy(cam["high_res"]).to(self.dev)[None]
            scores = pm.propagate(full, aff, beta=cfg.rw_beta, steps=cfg.rw_steps, bg_threshold=None,
                                  bg_alpha=cfg.bg_alpha, stride=stride, image_size=size)
        if cfg.refine_crf:
            rgb = (to_rgb(image) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
            scores = crf_probabilities(scores, rgb, cfg.crf_iterations)
        labels = pm.scores_to_labels(scores, class_indices=torch.from_numpy(keys).long().to(scores.device))
        return labels[0].cpu().numpy().astype(np.uint8)


def refine(cfg: PipelineConfig) -> Path:
    """Write the pseudo mask of every image of ``cam_split`` not done yet. Returns the folder."""
    dev = stage_device(cfg)
    rt.init_distributed(dev)
    log = rt.get_logger(cfg.run_dir)
    refiner = Refiner(cfg, dev)
    ds = open_dataset(cfg, cfg.cam_split)
    cams, out = Path(cfg.run_dir) / "cams", Path(cfg.run_dir) / "pseudo"
    stamp_folder(cfg, "refine", out)
    pal = voc_palette()
    todo = files_to_write(ds, out, ".png", lambda p: load_mask(p, ds.num_classes))
    t0 = time.perf_counter()
    for i in rt.progress(todo, len(todo), "refine", cfg.progress):
        s = ds[i]
        mask = refiner(to_tensor(s["image"]).to(dev), load_cam(cams / f"{s['id']}.npz"))
        save_png_atomic(out / f"{s['id']}.png", mask, pal)
    record_settings(cfg)
    rt.barrier()
    log.info(f"[refine] {len(todo)} new pseudo masks in {out} ({time.perf_counter() - t0:.1f} s; {cfg.aff_source} "
             f"affinity, radius {cfg.aff_radius}, beta {cfg.rw_beta}, {cfg.rw_steps} steps, dense CRF "
             f"{'on' if cfg.refine_crf else 'off'}; random walk backend "
             f"{ops.selected('random_walk_forward', dev)})")
    return out
