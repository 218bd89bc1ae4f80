"""``demo`` (every stage with the mIoU table) and ``ablation`` (GCN head x GRM)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from grmseg.pipeline import runtime as rt
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.report import write_report
from grmseg.pipeline.stages import STAGES, pipeline_stages


def remove_run(run: Path) -> None:
    """Delete a run folder (``--fresh``); FileExistsError when it is not a grmseg run folder."""
    if run.exists() and rt.is_main():
        if not (run / "config.json").is_file() and any(run.iterdir()):
            raise FileExistsError(f"{str(run)!r} exists and is not a grmseg run folder (no config.json); choose "
                                  "another --run-dir")
        rt.close_log(run)
        shutil.rmtree(run)


def run_all(cfg: PipelineConfig, extra_report: str = "") -> tuple[dict[str, Any], dict[str, float]]:
    """Run every stage of ``cfg`` (:func:`grmseg.pipeline.stages.pipeline_stages`), each skipping what is done,
    then ``eval`` and the report; returns (results of :func:`grmseg.pipeline.stages.evaluate`, seconds per stage)."""
    times: dict[str, float] = {}
    results: dict[str, Any] = {}
    for name in pipeline_stages(cfg):
        t0 = time.perf_counter()
        out = STAGES[name](cfg)
        times[name] = time.perf_counter() - t0
        if name == "eval":
            results = out
    if rt.is_main():
        write_report(cfg, results, extra=extra_report)
    return results, times


def miou_lines(results: dict[str, Any]) -> list[str]:
    """Plain-text lines ``<what> (<split>): <mIoU> %``."""
    return [f"  {k + ' (' + v['split'] + ')':<34} mIoU {100 * v['miou']:5.1f} %" for k, v in results.items()]


def run_demo(cfg: PipelineConfig, fresh: bool = False) -> dict[str, Any]:
    """The pipeline demo: train-cls -> make-cam -> train-irn -> refine -> train-seg (GRM) -> eval.

    Prints the mIoU of the CAMs, of the pseudo masks after the random walk and of the GRM segmentation, and
    writes ``<run_dir>/report.md``. An earlier run in ``run_dir`` is resumed (finished stages are skipped);
    ``fresh`` deletes it first.

    Returns:
        ``{"results": ..., "seconds": {stage: s}, "total_seconds": s, "report": path}``.
    """
    run = Path(cfg.run_dir)
    if fresh:
        remove_run(run)
    log = rt.get_logger(cfg.run_dir)
    t0 = time.perf_counter()
    what = (f"the {cfg.dataset} dataset ({cfg.syn_train_images} train / {cfg.syn_val_images} val images of "
            f"{cfg.syn_size}x{cfg.syn_size})" if cfg.builtin_dataset() else f"{cfg.dataset} at {cfg.data_root}")
    log.info(f"grmseg WSSS demo on {what}, run folder {run}")
    notes = ("## Notes\n\nThe CAM threshold, the confident-region thresholds and the background threshold of the "
             "demo preset were chosen once on training images with their masks, as WSSS papers tune them on the "
             "training set.")
    results, times = run_all(cfg, extra_report=notes)
    total = time.perf_counter() - t0
    log.info(f"\nmIoU on {cfg.dataset}:")
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
        shutil.rmtree(base)  # holds one run folder per arm, no config.json of its own
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
