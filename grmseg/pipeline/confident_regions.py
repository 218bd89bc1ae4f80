"""The training targets of the affinity nets: confident regions of the CAMs (IRN's ``cam_to_ir_label``).

Per image, from its full-size CAMs: foreground class k where k wins against a constant background ``conf_fg``,
background where the background wins even at the lower ``conf_bg``, the rest ignored (255). With ``crf`` each of
the two label maps is first refined by a dense CRF on the image, as IRN does (``crf_inference_label``: the labels
as unary with probability ``gt_prob`` 0.7, Gaussian sxy 3 / weight 3, bilateral sxy 50 / srgb 5 / weight 10,
10 iterations) so that the regions follow the image's edges instead of the CAMs' blur.

``train-irn`` and ``train-aff`` write them once as ``<run>/ir_label/<id>.png`` (:func:`write_confident_regions`)
and train from those files.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from grmseg.pipeline import runtime as rt
from grmseg.pipeline.common import files_to_write, load_cam, stamp_folder
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.crf import crf_labels
from grmseg.pipeline.datasets import IGNORE_INDEX, SegmentationDataset, load_mask, save_png_atomic, voc_palette
from grmseg.pipeline.pseudo_masks import confident_masks, with_background

__all__ = ["confident_labels", "write_confident_regions"]

def confident_labels(keys: np.ndarray, cam: np.ndarray, conf_fg: float, conf_bg: float,
                     image: np.ndarray | None = None) -> np.ndarray:
    """The confident regions of one image's CAMs.

    Args:
        keys: ``[n]`` 1-based classes of the CAM channels.  cam: ``[n, H, W]`` in ``[0, 1]``.
        conf_fg: a pixel is confidently class k where CAM_k is the largest and above this.
        conf_bg: a pixel is confidently background where every CAM is at most this.
        image: uint8 ``[H, W, 3]``: refine both label maps with IRN's dense CRF on it (None: no CRF).

    Returns:
        uint8 ``[H, W]``: class index, 0 (background) or 255 (unknown).
    """
    c = torch.from_numpy(np.ascontiguousarray(cam, np.float32))[None]
    table = torch.from_numpy(np.asarray(keys)).long()
    if image is None:
        out = confident_masks(c, conf_fg=conf_fg, conf_bg=conf_bg, class_indices=table, ignore_index=IGNORE_INDEX)
        return out[0].numpy().astype(np.uint8)
    n = len(keys) + 1
    lut = torch.cat([torch.zeros(1, dtype=torch.long), table])
    fg = lut[crf_labels(image, with_background(c, threshold=conf_fg)[0].argmax(0), n)]
    bg = lut[crf_labels(image, with_background(c, threshold=conf_bg)[0].argmax(0), n)]
    out = torch.where(fg == 0, torch.full_like(fg, IGNORE_INDEX), fg)
    out = torch.where((fg == 0) & (bg == 0), torch.zeros_like(fg), out)
    return out.numpy().astype(np.uint8)


def write_confident_regions(cfg: PipelineConfig, ds: SegmentationDataset, cams: Path, out: Path) -> Path:
    """Write ``<out>/<id>.png`` (palette PNG, atomically) for every image of ``ds`` without one, from its CAM file.

    ``<out>/settings.json`` records the thresholds and the CRF flag; ValueError when an existing folder was made
    with other settings (delete it to remake the regions). Returns ``out``.
    """
    log = rt.get_logger(cfg.run_dir)
    stamp_folder(cfg, "confident-regions", out)
    todo = files_to_write(ds, out, ".png", lambda p: load_mask(p, ds.num_classes))
    pal = voc_palette()
    t0 = time.perf_counter()
    for i in rt.progress(todo, len(todo), "confident regions", cfg.progress):
        s = ds[i]
        cam = load_cam(cams / f"{s['id']}.npz")
        lab = confident_labels(cam["keys"], cam["high_res"], cfg.conf_fg, cfg.conf_bg,
                               s["image"] if cfg.conf_crf else None)
        save_png_atomic(out / f"{s['id']}.png", lab, pal)
    rt.barrier()
    log.info(f"[confident regions] {len(todo)} new in {out} ({time.perf_counter() - t0:.1f} s; fg > {cfg.conf_fg}, "
             f"bg < {cfg.conf_bg}, dense CRF {'on' if cfg.conf_crf else 'off'})")
    return out
