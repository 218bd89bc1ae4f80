"""The training loop every learned stage shares: augmented views of a dataset, SGD with a poly learning rate,
epoch checkpoints that resume exactly (sampler order, augmentation and RNG states are functions of the seed and
the epoch, or saved), and DDP under torchrun.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from grmseg.geometry import cell_centres
from grmseg.pipeline import runtime as rt
from grmseg.pipeline.common import check_settings, to_tensor
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.datasets import SegmentationDataset
from grmseg.pipeline.transforms import Augment, sample_rng

__all__ = ["EpochSampler", "TrainingView", "make_augment", "train_loop"]


def make_augment(cfg: PipelineConfig, stage: str, batch: int) -> Augment:
    """The augmentation of a training stage (``"cls"``, ``"irn"``, ``"seg"``): ``scale_range``, flip, its crop.

    ValueError when the crop is off (0) but images of different sizes would have to share a batch.
    """
    if len(cfg.scale_range) != 2:
        raise ValueError(f"config key 'scale_range' must hold two factors (lo, hi), got {list(cfg.scale_range)}")
    crop = cfg.crop_size(stage)
    varying = not cfg.builtin_dataset() or cfg.scale_range[0] != cfg.scale_range[1] or cfg.scale_range[0] != 1
    if crop == 0 and batch > 1 and varying:
        raise ValueError(f"{stage}: {stage}_crop_size 0 (no crop) needs images of one size, but the images of "
                         f"{cfg.dataset} (rescaled by {list(cfg.scale_range)}) differ in size: set "
                         f"--{stage}-crop-size (or leave it unset for the dataset's default), or a batch of 1")
    return Augment(crop=crop, scale_range=(cfg.scale_range[0], cfg.scale_range[1]), flip=True)


class TrainingView(torch.utils.data.Dataset):
    """A dataset as a stage trains on it: normalised, augmented images with their targets.

    Args:
        ds: the dataset.  augment: the transform.  seed: run seed.  stream: the stage's name (its own draws).
        mask_fn: ``sample -> uint8 [H, W]`` full-resolution target (a pseudo mask, confident regions), or None:
            the target is the image-level label vector ``[K - 1]``.
        label_stride: > 1: the augmented mask is read at the cell centres of this stride (a stride-s target).

    Items: ``(image [3, h, w], target)``; ``target`` is float ``[K - 1]`` or long ``[h / label_stride, ...]``.
    """

    def __init__(self, ds: SegmentationDataset, augment: Augment, seed: int, stream: str,
                 mask_fn: Callable[[dict[str, Any]], np.ndarray] | None = None, label_stride: int = 1) -> None:
        self.ds, self.augment, self.seed, self.stream = ds, augment, seed, stream
        self.mask_fn, self.label_stride = mask_fn, label_stride
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        s = self.ds[i]
        rng = sample_rng(self.seed, self.epoch, i, self.stream)
        image = to_tensor(s["image"])
        mask = None
        if self.mask_fn is not None:
            mask = torch.from_numpy(np.ascontiguousarray(self.mask_fn(s))).long()
            if tuple(mask.shape) != tuple(image.shape[1:]):
                raise ValueError(f"{self.stream}: the target of image {s['id']!r} has size {tuple(mask.shape)}, "
                                 f"the image {tuple(image.shape[1:])}")
        image, mask = self.augment(image, mask, rng)
        if mask is None:
            return image, torch.from_numpy(s["labels"])
        return image, cell_centres(mask, self.label_stride)


class EpochSampler(torch.utils.data.Sampler):
    """A shuffled order that is a function of ``(seed, epoch)`` only (so a resumed run replays the same order)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def _loader(ds: torch.utils.data.Dataset, batch: int, cfg: PipelineConfig, world: int
            ) -> tuple[torch.utils.data.DataLoader, torch.utils.data.Sampler]:
    if world > 1:
        sampler: torch.utils.data.Sampler = torch.utils.data.DistributedSampler(ds, shuffle=True, seed=cfg.seed,
                                                                                drop_last=True)
    else:
        sampler = EpochSampler(len(ds), cfg.seed)
    per_proc = max(1, batch // world)
    return torch.utils.data.DataLoader(ds, batch_size=per_proc, sampler=sampler, num_workers=cfg.num_workers,
                                       drop_last=len(ds) >= per_proc * world * 2), sampler


def _poly_lr(opt: torch.optim.Optimizer, base: list[float], step: int, total: int, power: float = 0.9) -> None:
    f = (1 - step / max(total, 1)) ** power
    for g, lr in zip(opt.param_groups, base):
        g["lr"] = lr * f


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_loop(cfg: PipelineConfig, stage: str, model: torch.nn.Module, train_set: TrainingView, batch: int,
               epochs: int, groups: Sequence[dict[str, Any]], loss_fn: Callable[[Any, Tensor], Tensor],
               dev: torch.device, world: int, iterations: int = 0, settings: str = "") -> torch.nn.Module:
    """SGD (momentum 0.9, ``cfg.weight_decay``) with a poly learning rate over ``groups``.

    Args:
        stage: the folder under the run (``<run>/<stage>/checkpoint.pt`` after every epoch; resumed from).
        model: the module trained (wrapped in DDP when ``world > 1``); ``groups`` hold its parameters, each
            ``{"params": [...], "lr": base_lr}``.  loss_fn: ``(model(x), target) -> scalar``.
        epochs: passes over ``train_set``; with ``iterations > 0`` training stops after that many SGD steps
            (epochs as needed) instead.
        settings: the stage whose settings (:data:`grmseg.pipeline.config.STAGE_SETTINGS`) a checkpoint must
            have been made with to be resumed (``force`` overrides).

    Returns:
        The trained module (unwrapped).
    """
    log = rt.get_logger(cfg.run_dir)
    stage_dir = Path(cfg.run_dir) / stage
    loader, sampler = _loader(train_set, batch, cfg, world)
    if len(loader) == 0:
        raise ValueError(f"{stage}: {len(train_set)} training image(s) give no batch of {batch}")
    if world > 1:
        if dev.type == "cuda":  # BatchNorm statistics over the global batch (gloo/CPU: per process)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(model)
    core = rt.unwrap(model)
    opt = torch.optim.SGD([dict(g) for g in groups], momentum=0.9, weight_decay=cfg.weight_decay)
    base = [g["lr"] for g in groups]
    total = iterations if iterations > 0 else epochs * len(loader)
    epochs = math.ceil(total / len(loader))
    start = 0
    ckpt = rt.load_checkpoint(stage_dir / "checkpoint.pt")
    if ckpt is not None:
        if settings:
            check_settings(cfg, settings, ckpt.get("config"), f"{str(stage_dir / 'checkpoint.pt')!r}")
        core.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if "rng" in ckpt:
            _set_rng_state(ckpt["rng"])
        start = ckpt["epoch"] + 1
        log.info(f"[{stage}] resuming from epoch {start} ({stage_dir / 'checkpoint.pt'})")
    for epoch in range(start, epochs):
        model.train()
        train_set.epoch = epoch
        sampler.set_epoch(epoch)
        stats = torch.zeros(2, dtype=torch.float64)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(rt.progress(loader, len(loader), f"{stage} {epoch + 1}/{epochs}", cfg.progress)):
            step = epoch * len(loader) + i
            if step >= total:
                break
            _poly_lr(opt, base, step, total)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats += torch.tensor([loss.item() * x.shape[0], x.shape[0]], dtype=torch.float64)
        rt.all_reduce_sum(stats)
        log.info(f"[{stage}] epoch {epoch + 1}/{epochs}: loss {stats[0] / max(stats[1], 1):.4f} "
                 f"({int(stats[1])} images, {time.perf_counter() - t0:.1f} s, {world} process(es))")
        if rt.is_main():
            rt.save_atomic({"model": core.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                            "rng": _rng_state(), "config": cfg.to_dict()}, stage_dir / "checkpoint.pt")
        rt.barrier()
    return core
