"""The run report: example pictures and ``report.md`` with the mIoU table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from grmseg._optional import optional_import
from grmseg.pipeline.common import load_cam, open_dataset, stage_device, to_tensor
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.datasets import load_mask, save_png_atomic
from grmseg.pipeline.metrics import format_table
from grmseg.pipeline.stages.train_seg import load_segmenter, predict, seg_dir
from grmseg.pipeline.visualize import cam_heatmap, colorize, figure


def write_figures(cfg: PipelineConfig, num: int | None = None) -> Path | None:
    """``<run>/figures/examples.png``: image | CAM | pseudo mask | prediction | ground truth for the first
    ``num`` images of ``cam_split`` (panels whose stage has not run are blank). Returns the path, or None."""
    run = Path(cfg.run_dir)
    num = cfg.num_figures if num is None else num
    if num <= 0:
        return None
    ds = open_dataset(cfg, cfg.cam_split)
    dev = stage_device(cfg)
    seg_path = run / seg_dir(cfg) / "model.pt"
    model = load_segmenter(cfg, dev) if seg_path.is_file() else None
    rows = []
    for i in range(min(num, len(ds))):
        s = ds[i]
        cp, pp = run / "cams" / f"{s['id']}.npz", run / "pseudo" / f"{s['id']}.png"
        cam = None
        if cp.is_file():
            c = load_cam(cp)
            cam = cam_heatmap(s["image"], c["high_res"], c["keys"])
        pseudo = colorize(load_mask(pp, ds.num_classes)) if pp.is_file() else None
        pred = colorize(predict(model, to_tensor(s["image"]).to(dev))) if model is not None else None
        gt = colorize(s["mask"]) if s["mask"] is not None else None
        rows.append([s["image"], cam, pseudo, pred, gt])
    if not rows:
        return None
    h = rows[0][0].shape[0]
    scale = max(1, 160 // h) if h < 160 else 1
    if max(r[0].shape[0] for r in rows) != h or any(r[0].shape != rows[0][0].shape for r in rows):
        rows = [[None if p is None else _resize(p, rows[0][0].shape[:2]) for p in r] for r in rows]
    path = run / "figures" / "examples.png"
    save_png_atomic(path, figure(rows, scale=scale))
    return path


def _resize(panel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    Image = optional_import("PIL.Image", "the report's figures")

    return np.asarray(Image.fromarray(panel).resize((size[1], size[0]), Image.NEAREST))


def write_report(cfg: PipelineConfig, results: dict[str, Any], extra: str = "") -> Path:
    """``<run>/report.md``: the mIoU table, the example figure, the settings. Returns its path."""
    run = Path(cfg.run_dir)
    fig = write_figures(cfg)
    names = open_dataset(cfg, cfg.cam_split).class_names
    table = format_table({f"{k} ({v['split']}, {v['images']} images)": v for k, v in results.items()}, names)
    lines = [
        f"# grmseg WSSS run: {run.name}",
        "",
        (f"Dataset `{cfg.dataset}`; classifier `{cfg.backbone}` with the knowledge GCN head "
         f"{'on' if cfg.use_gcn else 'off'} (graph `{cfg.graph}`); CAM scales {list(cfg.cam_scales)}"
         f"{' + flip' if cfg.cam_flip else ''}; random walk beta {cfg.rw_beta}, {cfg.rw_steps} steps, radius "
         f"{cfg.aff_radius}, background `{cfg.bg_mode}`; segmentation net with GRM "
         f"{'on' if cfg.use_grm else 'off'}."),
        "",
        "## mIoU (%) and per-class IoU",
        "",
        table,
        "",
        (f"CAMs are scored with background threshold {cfg.cam_eval_thres}; CAMs and pseudo masks on the "
         f"`{cfg.cam_split}` split (the masks the segmentation net learns from), the segmentation net on "
         f"`{cfg.val_split}`. Confusion matrices: `eval/confusion_*.csv`; all numbers: `eval/eval.json`."),
        "",
    ]
    if fig is not None:
        lines += ["## Examples", "", "image | CAM | pseudo mask (random walk) | prediction | ground truth", "",
                  f"![examples]({fig.relative_to(run).as_posix()})", ""]
    if extra:
        lines += [extra, ""]
    path = run / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
