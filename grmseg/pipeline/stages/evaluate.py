"""Stage 6, ``eval``: mIoU + confusion matrices of the CAMs and pseudo masks (``cam_split``) and of the
segmentation net (``val_split``, predictions written to ``<run>/seg_pred``). Writes ``<run>/eval/``.

Every score is on the image pixels: CAMs from their ``high_res`` maps (background where every CAM is below
``cam_eval_thres``), pseudo masks as written, predictions of the net's exactly upsampled logits (mirror
averaged), and with ``eval_crf`` also after the dense CRF of their probabilities (``<run>/seg_pred_crf``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from grmseg.pipeline import runtime as rt
from grmseg.pipeline.common import load_cam, open_dataset, stage_device, to_tensor
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.crf import crf_probabilities
from grmseg.pipeline.datasets import load_mask, save_png_atomic, voc_palette
from grmseg.pipeline.metrics import SegmentationMeter, format_table
from grmseg.pipeline.stages.make_cam import cam_to_mask
from grmseg.pipeline.stages.train_seg import load_segmenter, predict_probabilities, seg_dir, seg_label


def evaluate(cfg: PipelineConfig) -> dict[str, Any]:
    """Score every stage that has run. Returns ``{"CAM": summary, "pseudo mask": summary, "segmentation (GRM)":
    summary}`` (missing stages left out; each summary as :meth:`SegmentationMeter.summary` plus split and
    image count)."""
    dev = stage_device(cfg)
    rt.init_distributed(dev)
    log = rt.get_logger(cfg.run_dir)
    run = Path(cfg.run_dir)
    results: dict[str, Any] = {}
    if not rt.is_main():
        rt.barrier()
        return results
    ds = open_dataset(cfg, cfg.cam_split)
    names = ds.class_names
    cam_m, ps_m = SegmentationMeter(names), SegmentationMeter(names)
    n_cam = n_ps = 0
    unscored: dict[str, list[str]] = {cfg.cam_split: [], cfg.val_split: []}
    for i in rt.progress(range(len(ds)), len(ds), "eval cam/pseudo", cfg.progress):
        s = ds[i]
        if s["mask"] is None:
            unscored[cfg.cam_split].append(s["id"])
            continue
        cp, pp = run / "cams" / f"{s['id']}.npz", run / "pseudo" / f"{s['id']}.png"
        if cp.is_file():
            cam_m.update(cam_to_mask(load_cam(cp), cfg.cam_eval_thres), s["mask"])
            n_cam += 1
        if pp.is_file():
            ps_m.update(load_mask(pp, len(names)), s["mask"])
            n_ps += 1
    if n_cam:
        results["CAM"] = {**cam_m.summary(), "split": cfg.cam_split, "images": n_cam}
    if n_ps:
        results["pseudo mask"] = {**ps_m.summary(), "split": cfg.cam_split, "images": n_ps}
    seg_path = run / seg_dir(cfg) / "model.pt"
    if seg_path.is_file():
        model = load_segmenter(cfg, dev)
        val = open_dataset(cfg, cfg.val_split)
        seg_m, crf_m = SegmentationMeter(names), SegmentationMeter(names)
        pal = voc_palette()
        n = 0
        for i in rt.progress(range(len(val)), len(val), "eval seg", cfg.progress):
            s = val[i]
            prob = predict_probabilities(model, to_tensor(s["image"]).to(dev))
            pred = prob.argmax(0).cpu().numpy().astype(np.uint8)
            save_png_atomic(run / f"{seg_dir(cfg)}_pred" / f"{s['id']}.png", pred, pal)
            if cfg.eval_crf:
                refined = crf_probabilities(prob[None], s["image"], cfg.crf_iterations)[0]
                pred_crf = refined.argmax(0).cpu().numpy().astype(np.uint8)
                save_png_atomic(run / f"{seg_dir(cfg)}_pred_crf" / f"{s['id']}.png", pred_crf, pal)
            if s["mask"] is not None:
                seg_m.update(pred, s["mask"])
                if cfg.eval_crf:
                    crf_m.update(pred_crf, s["mask"])
                n += 1
            else:
                unscored[cfg.val_split].append(s["id"])
        if n:
            label = seg_label(cfg)
            results[label] = {**seg_m.summary(), "split": cfg.val_split, "images": n}
            if cfg.eval_crf:
                results[label + " + CRF"] = {**crf_m.summary(), "split": cfg.val_split, "images": n}
    for split, ids in unscored.items():
        if ids:
            log.info(f"[eval] warning: {len(ids)} image(s) of {split!r} have no ground-truth mask and are not scored "
                     f"(e.g. {ids[:3]})")
    for summary in results.values():
        summary["unscored_images"] = len(unscored[summary["split"]])
    out = run / "eval"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".eval.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"class_names": names, "results": results}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "eval.json")
    for key, summary in results.items():
        slug = "_".join(re.findall(r"[a-z]+", key.lower()))  # "segmentation (GRM) + CRF" -> segmentation_grm_crf
        np.savetxt(out / f"confusion_{slug}.csv", np.asarray(summary["confusion"]), fmt="%d",
                   delimiter=",", header=",".join(names))
    table = format_table({f"{k} ({v['split']})": v for k, v in results.items()}, names)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    log.info(f"[eval] mIoU (%), run {run}:\n{table}")
    rt.barrier()
    return results
