"""What every stage shares: image normalisation, the dataset of a config, the knowledge graph, devices, seeds,
checks that an earlier stage wrote its outputs, and the CAM file format.

CAM file (``<run>/cams/<id>.npz``, written by ``make-cam``)::

    keys      int64 [n]                  1-based classes present in the image (dataset labels)
    cam       float16 [n, ceil(H/s), ceil(W/s)]   on the stride-``cam_stride`` grid (IRN: 4)
    high_res  float16 [n, H, W]          on the image pixels
    stride    int64 []                    s
"""

from __future__ import annotations

import json
import logging
import os
import random
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from grmseg import knowledge
from grmseg.pipeline import runtime as rt
from grmseg.pipeline.config import STAGE_SETTINGS, PipelineConfig
from grmseg.pipeline.datasets import SegmentationDataset, build_dataset, load_mask
from grmseg.pipeline.datasets.base import require_dir

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def to_tensor(image: np.ndarray) -> Tensor:
    """uint8 ``[H, W, 3]`` -> normalised float ``[3, H, W]`` (ImageNet mean/std)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    return (t - MEAN) / STD


def to_rgb(image: Tensor) -> Tensor:
    """Normalised ``[..., 3, H, W]`` -> RGB in ``[0, 1]`` (the inverse of :func:`to_tensor`)."""
    return image * STD.to(image.device) + MEAN.to(image.device)


def open_dataset(cfg: PipelineConfig, split: str) -> SegmentationDataset:
    """The dataset of ``cfg`` for ``split`` (built-in: ``syn_train_images`` for train, else ``syn_val_images``)."""
    n = cfg.syn_train_images if split == "train" else cfg.syn_val_images
    return build_dataset(cfg.dataset, split, cfg.data_root, cfg.cls_labels, num_images=n, size=cfg.syn_size,
                         seed=cfg.seed)


def class_name_embeddings(class_names: list[str]) -> Tensor:
    """``[K, E]`` shipped class-name embeddings for ``class_names`` (looked up among the VOC, then COCO classes)."""
    rows = []
    tables = {ds: (knowledge.class_names(ds), knowledge.class_embeddings(ds)) for ds in knowledge.DATASETS}
    for name in class_names:
        for names, emb in tables.values():
            if name in names:
                rows.append(emb[names.index(name)])
                break
        else:
            raise ValueError(f"no shipped embedding for class {name!r}: use VOC or COCO class names, or "
                             "grmseg.knowledge.embed_class_names")
    return torch.stack(rows)


def knowledge_graph(kind: str, embeddings: Tensor, labels: np.ndarray) -> Tensor | None:
    """Normalised ``[K, K]`` graph: ``"cooccurrence"`` (ML-GCN, from the training labels ``[N, K]``),
    ``"knn"`` (3-NN of the embeddings ``[K, E]``) or ``"none"`` (None: identity)."""
    k = embeddings.shape[0]
    if kind == "none" or k == 1:
        return None
    if kind == "cooccurrence":
        a = knowledge.cooccurrence_adjacency(torch.from_numpy(labels).float(), t=0.4, p=0.25)
        return knowledge.normalize_adjacency(a, add_self_loops=False)
    if kind == "knn":
        return knowledge.normalize_adjacency(knowledge.knn_adjacency(embeddings, min(3, k - 1), weighted=True))
    raise ValueError(f"graph must be 'cooccurrence', 'knn' or 'none', got {kind!r}")


def stage_device(cfg: PipelineConfig) -> torch.device:
    """The stage's device; also applies ``cfg.threads`` (CPU threads per process, 0 = torch's default). Checks
    first that the dataset folder exists (before any run folder is made) and removes temp files that a killed
    earlier run left in the run folder."""
    if not cfg.builtin_dataset():
        if not cfg.data_root:
            raise ValueError(f"dataset {cfg.dataset!r} needs its folder: set --data-root")
        require_dir(cfg.data_root, f"{cfg.dataset} dataset (--data-root)")
    run = Path(cfg.run_dir)
    for folder in [run, *(p for p in run.iterdir() if p.is_dir())] if run.is_dir() else []:
        rt.remove_stale_temp_files(folder)
    if cfg.threads > 0 and torch.get_num_threads() != cfg.threads:
        torch.set_num_threads(cfg.threads)
    return rt.resolve_device(cfg.device)


def require_inputs(stage: str, folder: Path, ids: Sequence[str], suffix: str, what: str, hint: str) -> None:
    """Raise FileNotFoundError naming how many of ``folder/<id><suffix>`` an earlier stage has not written."""
    missing = [i for i in ids if not (folder / f"{i}{suffix}").is_file()]
    if missing:
        raise FileNotFoundError(f"{stage}: {len(missing)} {what} missing in {str(folder)!r} (e.g. "
                                f"{missing[:3]}): {hint}")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def shard(n: int) -> range:
    """The indices ``0..n-1`` this process handles (every ``world``-th from its rank)."""
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) \
        if torch.distributed.is_initialized() else (0, 1)
    return range(rank, n, world)


def backbone_state(model_path: Path) -> dict[str, Tensor]:
    """The ``backbone.*`` weights of a saved stage model (prefix removed), to start another net from."""
    ckpt = rt.load_checkpoint(model_path)
    if ckpt is None:
        raise FileNotFoundError(f"no trained model at {str(model_path)!r}")
    return {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}


class MaskFolder:
    """``sample -> uint8 [H, W]``: the label PNG ``<folder>/<id>.png`` of a sample (pseudo masks, confident
    regions), checked against ``num_classes`` (255 = ignore)."""

    def __init__(self, folder: Path, num_classes: int) -> None:
        self.folder, self.num_classes = Path(folder), num_classes

    def __call__(self, sample: dict) -> np.ndarray:
        return load_mask(self.folder / f"{sample['id']}.png", self.num_classes)


# ------------------------------------------------------------------------------------------------- CAM files
def save_cam(path: Path, keys: np.ndarray, cam: np.ndarray, high_res: np.ndarray, stride: int) -> None:
    """Write a CAM file atomically (temp file + ``os.replace``); arrays stored as float16."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, keys=np.asarray(keys, np.int64), cam=cam.astype(np.float16), high_res=high_res.astype(np.float16),
             stride=np.asarray(stride, np.int64))
    os.replace(tmp, path)


def load_cam(path: Path) -> dict[str, np.ndarray]:
    """A CAM file: ``keys [n]`` (1-based classes), ``cam [n, h, w]``, ``high_res [n, H, W]`` (float32), ``stride``."""
    if not path.is_file():
        raise FileNotFoundError(f"CAM file {str(path)!r} does not exist: run make-cam first")
    try:
        with np.load(path) as z:
            return {"keys": z["keys"], "cam": z["cam"].astype(np.float32),
                    "high_res": z["high_res"].astype(np.float32), "stride": int(z["stride"])}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"corrupt CAM file {str(path)!r} ({exc}): delete it and run make-cam again") from None


# ------------------------------------------------------------------------------------------ stage settings
def check_settings(cfg: PipelineConfig, stage: str, saved: dict | None, what: str) -> None:
    """ValueError when ``saved`` (the settings a checkpoint or output folder was made with) differs from ``cfg``
    in a setting of ``stage`` (:data:`grmseg.pipeline.config.STAGE_SETTINGS`), listing each; ``force`` lets it pass
    with a warning. Keys the saved settings lack (older runs) are not compared."""
    if not saved:
        return
    now = cfg.to_dict()
    diff = {k: (saved[k], now[k]) for k in STAGE_SETTINGS[stage] if k in saved and saved[k] != now[k]}
    if not diff:
        return
    listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diff.items())
    if cfg.force:
        rt.get_logger(cfg.run_dir).info(f"[{stage}] warning: --force continues {what}, made with other settings "
                                        f"({listed})")
        return
    raise ValueError(f"{stage}: {what} was made with other settings ({listed}); run with those, delete it to redo "
                     "the stage, or pass --force to continue it anyway")


def stamp_folder(cfg: PipelineConfig, stage: str, folder: Path) -> None:
    """Record the stage's settings in ``<folder>/settings.json`` (first run), or check them (later runs)."""
    stamp = folder / "settings.json"
    if stamp.is_file():
        check_settings(cfg, stage, json.loads(stamp.read_text(encoding="utf-8")), f"{str(folder)!r}")
    elif rt.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        now = cfg.to_dict()
        stamp.write_text(json.dumps({k: now[k] for k in STAGE_SETTINGS[stage]}, indent=1) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------ stage models
def record_settings(cfg: PipelineConfig) -> None:
    """``<run>/config.json``: the settings of the last stage that finished (rank 0), which later stages given only
    ``--run-dir`` continue from."""
    if rt.is_main():
        cfg.save(Path(cfg.run_dir) / "config.json")


def save_stage_model(cfg: PipelineConfig, stage: str, final: Path, model: torch.nn.Module, **extra: object) -> None:
    """Rank 0 writes ``{"model": state, "config": cfg, **extra}`` to ``final`` atomically and records the
    settings; every rank waits."""
    if rt.is_main():
        rt.save_atomic({"model": model.state_dict(), "config": cfg.to_dict(), **extra}, final)
        record_settings(cfg)
        rt.get_logger(cfg.run_dir).info(f"[{stage}] saved {final}")
    rt.barrier()


def load_stage_model(path: Path, what: str, hint: str) -> dict:
    """The checkpoint of a finished stage; FileNotFoundError ``no trained <what> at <path>: <hint>``."""
    ckpt = rt.load_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no trained {what} at {str(path)!r}: {hint}")
    return ckpt


def begin_training_stage(cfg: PipelineConfig, stage: str, final: Path
                         ) -> tuple[torch.device, int, logging.Logger, bool]:
    """Device, process group and log of a training stage: ``(device, world size, logger, done)``; ``done`` when
    its model ``final`` exists already, made with the same settings (the stage then has nothing to do)."""
    dev = stage_device(cfg)
    _, world = rt.init_distributed(dev)
    log = rt.get_logger(cfg.run_dir)
    done = rt.is_complete_checkpoint(final)
    if done:
        check_settings(cfg, stage, rt.load_checkpoint(final).get("config"), f"{str(final)!r}")
        log.info(f"[{stage}] done already: {final}")
    return dev, world, log, done


def files_to_write(ds: SegmentationDataset, folder: Path, suffix: str, read: Callable[[Path], object]) -> list[int]:
    """The indices (of this process's shard) whose ``<folder>/<id><suffix>`` is missing or does not read back
    with ``read`` (a file truncated by a kill or a full disk is written again, with a warning)."""
    log = rt.get_logger()
    todo = []
    for i in shard(len(ds)):
        path = folder / f"{ds.ids[i]}{suffix}"
        if not path.is_file():
            todo.append(i)
            continue
        try:
            read(path)
        except (ValueError, OSError) as exc:
            log.info(f"warning: {str(path)!r} is damaged ({exc}); writing it again")
            todo.append(i)
    return todo
