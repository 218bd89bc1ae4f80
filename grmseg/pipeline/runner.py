"""``demo``: every stage with the mIoU table (the ablation: :mod:`grmseg.pipeline.ablation`)."""

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
