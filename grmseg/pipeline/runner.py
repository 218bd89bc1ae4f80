"""``demo`` (every stage on the synthetic data, with the mIoU table) and ``ablation`` (GCN head x GRM)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from grmseg.pipeline import runtime as rt
from grmseg.pipeline import stages
from grmseg.pipeline.config import PipelineConfig

STAGES = (("train-cls", stages.train_cls), ("make-cam", stages.make_cam), ("refine", stages.refine),
          ("train-seg", stages.train_seg))


def run_all(cfg: PipelineConfig) -> tuple[dict[str, Any], dict[str, float]]:
    """Run every stage then ``eval``; returns (results of :func:`grmseg.pipeline.stages.evaluate`, seconds per
    stage)."""
    times: dict[str, float] = {}
    todo = list(STAGES)
    if cfg.aff_source == "affnet":
        todo.insert(2, ("train-aff", stages.train_aff))
    for name, fn in todo:
        t0 = time.perf_counter()
        fn(cfg)
        times[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = stages.evaluate(cfg)
    times["eval"] = time.perf_counter() - t0
    return results, times


def miou_lines(results: dict[str, Any]) -> list[str]:
    """Plain-text lines ``<what> (<split>): <mIoU> %``."""
    return [f"  {k + ' (' + v['split'] + ')':<34} mIoU {100 * v['miou']:5.1f} %" for k, v in results.items()]


def run_demo(cfg: PipelineConfig, fresh: bool = True) -> dict[str, Any]:
    """The pipeline demo: synthetic data, train-cls -> make-cam -> refine -> train-seg (GRM) -> eval.

    Prints the mIoU of the CAMs, of the pseudo masks after the random walk and of the GRM segmentation, and
    writes ``<run_dir>/report.md``. ``fresh`` removes an earlier run in ``run_dir`` first.

    Returns:
        ``{"results": ..., "seconds": {stage: s}, "total_seconds": s, "report": path}``.
    """
    run = Path(cfg.run_dir)
    if fresh and run.exists() and rt.is_main():
        if not (run / "config.json").is_file() and any(run.iterdir()):
            raise FileExistsError(f"demo: {str(run)!r} exists and is not a grmseg run folder; choose another "
                                  "--run-dir")
        shutil.rmtree(run)
    log = rt.get_logger(cfg.run_dir)
    t0 = time.perf_counter()
    log.info(f"grmseg WSSS demo on the synthetic dataset ({cfg.syn_train_images} train / {cfg.syn_val_images} val "
             f"images of {cfg.syn_size}x{cfg.syn_size}), run folder {run}")
    results, times = run_all(cfg)
    total = time.perf_counter() - t0
    if rt.is_main():
        from grmseg.pipeline.report import write_report

        notes = [
            "## Notes",
            "",
            (f"Time per stage on this machine: {', '.join(f'{k} {v:.0f} s' for k, v in times.items())}; "
             f"total {total:.0f} s."),
            "",
            ("The CAM threshold, the background threshold and the affinity settings (classifier features scaled "
             f"by {cfg.aff_scale}, image colour weight {cfg.aff_rgb_weight}, beta {cfg.rw_beta}) were chosen once "
             "on 150 training images with their masks, as WSSS papers tune them on the training set. Without the "
             "colour term the random walk on the classifier's features alone did not improve on the CAMs here."),
        ]
        write_report(cfg, results, extra="\n".join(notes))
    log.info("\nmIoU on the synthetic data:")
    for line in miou_lines(results):
        log.info(line)
    log.info("time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {total:.0f} s")
    log.info(f"report: {run / 'report.md'}")
    return {"results": results, "seconds": times, "total_seconds": total, "report": run / "report.md"}


def quick_overrides() -> dict[str, Any]:
    """Smaller settings for ``ablation --quick``."""
    return {"syn_train_images": 256, "syn_val_images": 64, "cls_epochs": 5, "seg_epochs": 5}


def run_ablation(cfg: PipelineConfig, seeds: tuple[int, ...] = (0,), fresh: bool = False) -> dict[str, Any]:
    """With / without the knowledge GCN head (classifier) x with / without GRM (segmentation net).

    Each GCN setting trains its own classifier, CAMs and pseudo masks under ``<run_dir>/gcn-{on,off}-s<seed>``;
    both segmentation nets train on the same pseudo masks. Writes ``<run_dir>/ablation.md``.

    Returns:
        ``{"rows": [{"gcn", "grm", "seed", "cam", "pseudo", "seg"}], "mean": {...}, "table": str}``.
    """
    base = Path(cfg.run_dir)
    if fresh and base.exists() and rt.is_main():
        shutil.rmtree(base)
    log = rt.get_logger(cfg.run_dir)
    rows = []
    for seed in seeds:
        for gcn in (True, False):
            sub = cfg.replace(run_dir=str(base / f"gcn-{'on' if gcn else 'off'}-s{seed}"), use_gcn=gcn, seed=seed,
                              cam_source="classifier")
            for grm in (True, False):
                c = sub.replace(use_grm=grm)
                log.info(f"[ablation] seed {seed}: GCN head {'on' if gcn else 'off'}, GRM {'on' if grm else 'off'}")
                res, _ = run_all(c)
                seg = next(v for k, v in res.items() if k.startswith("segmentation"))
                rows.append({"gcn": gcn, "grm": grm, "seed": seed, "cam": res["CAM"]["miou"],
                             "pseudo": res["pseudo mask"]["miou"], "seg": seg["miou"]})
    mean: dict[str, dict[str, float]] = {}
    for gcn in (True, False):
        for grm in (True, False):
            sel = [r for r in rows if r["gcn"] == gcn and r["grm"] == grm]
            key = f"GCN head {'on' if gcn else 'off'}, GRM {'on' if grm else 'off'}"
            mean[key] = {m: sum(r[m] for r in sel) / len(sel) for m in ("cam", "pseudo", "seg")}
            if len(sel) > 1:
                mean[key]["seg_min"] = min(r["seg"] for r in sel)
                mean[key]["seg_max"] = max(r["seg"] for r in sel)
    lines = ["| classifier | segmentation | CAM mIoU | pseudo-mask mIoU | segmentation mIoU |",
             "|---|---|---:|---:|---:|"]
    for key, m in mean.items():
        gcn_part, grm_part = key.split(", ")
        spread = f" ({100 * m['seg_min']:.1f}-{100 * m['seg_max']:.1f})" if "seg_min" in m else ""
        lines.append(f"| {gcn_part} | {grm_part} | {100 * m['cam']:.1f} | {100 * m['pseudo']:.1f} | "
                     f"{100 * m['seg']:.1f}{spread} |")
    table = "\n".join(lines)
    if rt.is_main():
        base.mkdir(parents=True, exist_ok=True)
        (base / "ablation.md").write_text(
            f"# Ablation on the synthetic data (seeds {list(seeds)}; mean mIoU %, min-max over seeds)\n\n{table}\n",
            encoding="utf-8")
    log.info(f"\n[ablation] seeds {list(seeds)}, mIoU (%):\n{table}")
    return {"rows": rows, "mean": mean, "table": table}
