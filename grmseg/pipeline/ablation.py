"""``ablation``: the knowledge GCN head on/off (classifier) x GRM on / off / on the identity graph (segmentation).

Per seed, each GCN setting trains its own classifier, CAMs, boundary net and pseudo masks under
``<run_dir>/gcn-{on,off}-s<seed>``; the three segmentation nets of :data:`SEG_ARMS` train on those same pseudo
masks. The ``identity`` arm is GRM with its graph replaced by the identity and without the class-name embeddings:
the same pixel -> class-node -> pixel pooling with no knowledge in it, which separates what "global pooling"
does from what the knowledge graph does. Every run is scored as :func:`grmseg.pipeline.stages.evaluate` scores
it, plus the IoU and the confusion of the dataset's look-alike pairs (``context``: cat / dog). Writes
``<run_dir>/ablation.json`` and ``ablation.md``.

The segmentation head is DeepLab's ASPP with its image-pooling branch, as in the paper. With ``aspp_pooling``
off (``--no-aspp-pooling``) the same command trains the segmentation arms without it, on the classifiers and
pseudo masks already in ``run_dir`` (``seg*_nopool/`` folders), and writes ``ablation_nopool.json`` / ``.md``:
there the head has no global context of its own, and only GRM can bring it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from grmseg.pipeline import runtime as rt
from grmseg.pipeline.common import open_dataset
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.datasets.synthetic import scene_spec
from grmseg.pipeline.metrics import look_alike_scores
from grmseg.pipeline.runner import run_all
from grmseg.pipeline.stages.train_seg import seg_label

SEG_ARMS: dict[str, dict[str, Any]] = {
    "on": {"use_grm": True},
    "off": {"use_grm": False},
    "identity": {"use_grm": True, "grm_graph": "none", "grm_embeddings": False},
}
"""The segmentation arms: GRM on (the classifier's knowledge graph and the class-name embeddings), GRM off, GRM
on the identity graph without embeddings (no knowledge)."""

SEG_ARM_NAMES = {"on": "GRM on", "off": "GRM off", "identity": "GRM, identity graph"}

STAGE_KEYS = {"cam": "CAM", "pseudo": "pseudo mask"}
"""Ablation row keys -> :func:`grmseg.pipeline.stages.evaluate` result names (``seg``: :func:`seg_label`)."""


def arm_config(cfg: PipelineConfig, seed: int, gcn: bool, grm: str) -> PipelineConfig:
    """The config of one ablation arm: ``<cfg.run_dir>/gcn-{on,off}-s<seed>``, CAMs from the classifier weights,
    GRM as :data:`SEG_ARMS` ``[grm]``."""
    if grm not in SEG_ARMS:
        raise ValueError(f"ablation: grm arm must be one of {list(SEG_ARMS)}, got {grm!r}")
    run = Path(cfg.run_dir) / f"gcn-{'on' if gcn else 'off'}-s{seed}"
    base = {"grm_graph": None, "grm_embeddings": True}
    return cfg.replace(run_dir=str(run), use_gcn=gcn, seed=seed, cam_source="classifier", **{**base, **SEG_ARMS[grm]})


def _scored(summary: dict[str, Any], class_names: list[str], pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {"miou": summary["miou"], "split": summary["split"], "images": summary["images"],
            "look_alikes": [look_alike_scores(summary["confusion"], class_names, p) for p in pairs]}


def look_alike_pairs(cfg: PipelineConfig) -> tuple[tuple[str, str], ...]:
    """The look-alike class pairs of ``cfg``'s dataset (built-in ``context``: cat / dog; else none)."""
    return scene_spec(cfg.dataset).look_alikes if cfg.builtin_dataset() else ()


def ablation_row(results: dict[str, Any], class_names: list[str], cfg: PipelineConfig, gcn: bool,
                 grm: str) -> dict[str, Any]:
    """One row of ``ablation.json`` from the results of :func:`grmseg.pipeline.stages.evaluate` for the arm
    (``class_names``: the dataset's K names): ``{"gcn", "grm", "seed", "aspp_pooling", "cam" | "pseudo" | "seg" |
    "seg_crf":
    {"miou", "split", "images", "look_alikes": [look_alike_scores ...]}}`` (``seg_crf`` only with ``eval_crf``)."""
    pairs = look_alike_pairs(cfg)
    keys = {**STAGE_KEYS, "seg": seg_label(cfg), "seg_crf": seg_label(cfg) + " + CRF"}
    row: dict[str, Any] = {"gcn": gcn, "grm": grm, "seed": cfg.seed, "aspp_pooling": cfg.aspp_pooling}
    for key, name in keys.items():
        if name in results:
            row[key] = _scored(results[name], list(class_names), pairs)
        elif key != "seg_crf":
            raise ValueError(f"ablation: the run {cfg.run_dir!r} has no {name!r} result")
    return row


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of one row, flat: ``<stage>_miou``, ``<stage>_<class>_iou``, ``<stage>_<a>_<b>_confusion``."""
    out: dict[str, float] = {}
    for stage in ("cam", "pseudo", "seg", "seg_crf"):
        if stage not in row:
            continue
        out[f"{stage}_miou"] = row[stage]["miou"]
        for p in row[stage]["look_alikes"]:
            a, b = p["pair"]
            for c in (a, b):
                out[f"{stage}_{c}_iou"] = math.nan if p["iou"][c] is None else p["iou"][c]
            out[f"{stage}_{a}_{b}_confusion"] = p["confusion"]
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per arm ``"gcn-<on|off>/grm-<arm>"``, per metric of :func:`row_metrics`: mean, min, max and the sample
    standard deviation over the seeds (0 for one seed)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for gcn in (True, False):
        for grm in SEG_ARMS:
            sel = [row_metrics(r) for r in rows if r["gcn"] == gcn and r["grm"] == grm]
            if not sel:
                continue
            stats: dict[str, dict[str, float]] = {}
            for m in sel[0]:
                v = [s[m] for s in sel]
                mean = sum(v) / len(v)
                std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
                stats[m] = {"mean": mean, "min": min(v), "max": max(v), "std": std}
            out[f"gcn-{'on' if gcn else 'off'}/grm-{grm}"] = stats
    return out


def _pct(stats: dict[str, dict[str, float]], m: str, spread: bool) -> str:
    if m not in stats:
        return "-"
    s = stats[m]
    text = f"{100 * s['mean']:.1f}"
    return text + (f" ({100 * s['min']:.1f}-{100 * s['max']:.1f})" if spread else "")


def ablation_table(summary: dict[str, dict[str, dict[str, float]]], pairs: tuple[tuple[str, str], ...],
                   seeds: int) -> str:
    """A Markdown table of :func:`summarize`: per arm the mIoUs and, per look-alike pair, the segmentation IoUs and
    the share of the pair's pixels given the other class (segmentation and pseudo masks); mean (min-max) over
    seeds."""
    spread = seeds > 1
    head = "| classifier | segmentation | CAM mIoU | pseudo-mask mIoU | segmentation mIoU |"
    rule = "|---|---|---:|---:|---:|"
    for a, b in pairs:
        head += f" seg. {a} IoU | seg. {b} IoU | seg. {a} <-> {b} confused | pseudo-mask {a} <-> {b} confused |"
        rule += "---:|---:|---:|---:|"
    lines = [head, rule]
    for arm, st in summary.items():
        gcn, grm = arm.split("/")
        cells = [f"GCN head {gcn[4:]}", SEG_ARM_NAMES[grm[4:]], _pct(st, "cam_miou", False),
                 _pct(st, "pseudo_miou", False), _pct(st, "seg_miou", spread)]
        for a, b in pairs:
            cells += [_pct(st, f"seg_{a}_iou", False), _pct(st, f"seg_{b}_iou", False),
                      _pct(st, f"seg_{a}_{b}_confusion", spread), _pct(st, f"pseudo_{a}_{b}_confusion", False)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the segmentation mIoU of every arm and seed."""
    seeds = sorted({r["seed"] for r in rows})
    lines = ["| classifier | segmentation | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---:|" * len(seeds)]
    for gcn in (True, False):
        for grm in SEG_ARMS:
            by_seed = {r["seed"]: r for r in rows if r["gcn"] == gcn and r["grm"] == grm}
            if by_seed:
                cells = [f"{100 * by_seed[s]['seg']['miou']:.1f}" if s in by_seed else "-" for s in seeds]
                lines.append(f"| GCN head {'on' if gcn else 'off'} | {SEG_ARM_NAMES[grm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_ablation(cfg: PipelineConfig, seeds: tuple[int, ...] = (0,), fresh: bool = False) -> dict[str, Any]:
    """Run every arm (:func:`arm_config`) for every seed, each resuming what is done; write the results.

    Returns:
        ``{"dataset", "seeds", "look_alikes", "aspp_pooling", "rows": [ablation_row ...], "summary":
        summarize(rows), "seconds": {seed: s}, "table": str}``; also ``<run_dir>/ablation.json`` (the same less the
        table, plus the settings) and ``<run_dir>/ablation.md`` (``ablation_nopool.*`` without ASPP pooling).
    """
    if not seeds:
        raise ValueError("ablation: seeds must name at least one seed, got none")
    base = Path(cfg.run_dir)
    if fresh and base.exists() and rt.is_main():
        shutil.rmtree(base)  # holds one run folder per arm, no config.json of its own
    log = rt.get_logger(cfg.run_dir)
    pairs = look_alike_pairs(cfg)
    rows, seconds = [], {}
    for seed in seeds:
        t0 = time.perf_counter()
        for gcn in (True, False):
            for grm in SEG_ARMS:
                c = arm_config(cfg, seed, gcn, grm)
                log.info(f"[ablation] seed {seed}: GCN head {'on' if gcn else 'off'}, {SEG_ARM_NAMES[grm]}")
                res, _ = run_all(c)
                rows.append(ablation_row(res, open_dataset(c, c.cam_split).class_names, c, gcn, grm))
        seconds[str(seed)] = time.perf_counter() - t0
    summary = summarize(rows)
    table = ablation_table(summary, pairs, len(seeds))
    out = {"dataset": cfg.dataset, "seeds": list(seeds), "look_alikes": [list(p) for p in pairs],
           "aspp_pooling": cfg.aspp_pooling, "rows": rows, "summary": summary, "seconds": seconds}
    stem = "ablation" if cfg.aspp_pooling else "ablation_nopool"
    head = "ASPP with image pooling" if cfg.aspp_pooling else "ASPP without image pooling"
    if rt.is_main():
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".{stem}.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({**out, "settings": cfg.to_dict()}, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, base / f"{stem}.json")
        spread = "mean (min-max over seeds)" if len(seeds) > 1 else "one seed"
        (base / f"{stem}.md").write_text(
            f"# Ablation on the {cfg.dataset} data, segmentation head: {head} (seeds {list(seeds)}; %, "
            f"{spread})\n\n{table}\n\n"
            f"## Segmentation mIoU per seed\n\n{seed_table(rows)}\n\nSeconds per seed: "
            + ", ".join(f"{s} {v:.0f}" for s, v in seconds.items()) + "\n", encoding="utf-8")
    log.info(f"\n[ablation] {cfg.dataset}, {head}, seeds {list(seeds)} (%):\n{table}")
    return {**out, "table": table}


def quick_overrides() -> dict[str, Any]:
    """Smaller settings for ``ablation --quick``."""
    return {"syn_train_images": 256, "syn_val_images": 64, "cls_epochs": 5, "seg_epochs": 5}
