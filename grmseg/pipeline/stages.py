"""The WSSS stages: train-cls, make-cam, refine, train-seg, eval; and ``demo`` / ``ablation`` that chain them.

Run folder (``cfg.run_dir``)::

    config.json  log.txt
    cls/{checkpoint.pt, model.pt, train_labels.npy}     classifier (+ knowledge GCN head)
    cams/<id>.npz            keys [n] (1-based classes), cam [n, h, w] (feature stride), high_res [n, H, W]
    pseudo/<id>.png          pseudo masks after the random walk (class indices, VOC palette)
    seg/{checkpoint.pt, model.pt}                       segmentation net (+ GRM)
    seg_pred/<id>.png        predictions on the validation split
    eval/{eval.json, table.md, confusion_*.csv}
    figures/examples.png     report.md

Every stage skips the work already done (finished models, existing CAM / mask files) and resumes training
from the last epoch checkpoint; ``train-cls`` and ``train-seg`` run data-parallel under torchrun (DDP).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from grmseg import knowledge, ops
from grmseg.models.wsss import MultiLabelClassifier, SegmentationNet
from grmseg.pipeline import pseudo_masks as pm
from grmseg.pipeline import runtime as rt
from grmseg.pipeline.cam_aggregation import aggregate_cams
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.datasets import IGNORE_INDEX, SegmentationDataset, build_dataset, load_mask, save_png_atomic
from grmseg.pipeline.datasets.base import voc_palette
from grmseg.pipeline.metrics import SegmentationMeter, format_table

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


# ------------------------------------------------------------------------------------------------- helpers
def to_tensor(image: np.ndarray) -> Tensor:
    """uint8 ``[H, W, 3]`` -> normalised float ``[3, H, W]`` (ImageNet mean/std)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    return (t - MEAN) / STD


def open_dataset(cfg: PipelineConfig, split: str) -> SegmentationDataset:
    """The dataset of ``cfg`` for ``split`` (synthetic: ``syn_train_images`` for train, else ``syn_val_images``)."""
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


def _device(cfg: PipelineConfig) -> torch.device:
    """The stage's device; also applies ``cfg.threads`` (CPU threads per process, 0 = torch's default)."""
    if cfg.threads > 0 and torch.get_num_threads() != cfg.threads:
        torch.set_num_threads(cfg.threads)
    return rt.resolve_device(cfg.device)


def _require_inputs(stage: str, folder: Path, ids: Sequence[str], suffix: str, what: str, hint: str) -> None:
    """Raise FileNotFoundError naming how many of ``folder/<id><suffix>`` an earlier stage has not written."""
    missing = [i for i in ids if not (folder / f"{i}{suffix}").is_file()]
    if missing:
        raise FileNotFoundError(f"{stage}: {len(missing)} {what} missing in {str(folder)!r} (e.g. "
                                f"{missing[:3]}): {hint}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _poly_lr(opt: torch.optim.Optimizer, base: list[float], step: int, total: int, power: float = 0.9) -> None:
    f = (1 - step / max(total, 1)) ** power
    for g, lr in zip(opt.param_groups, base):
        g["lr"] = lr * f


def _shard(n: int) -> range:
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) \
        if torch.distributed.is_initialized() else (0, 1)
    return range(rank, n, world)


class _TrainSet(torch.utils.data.Dataset):
    """Training view of a dataset: flip (+ random crop), returns (image [3, H, W], target).

    ``target`` is the ``[K - 1]`` label vector (``masks_dir`` None) or the ``[H, W]`` long pseudo mask.
    """

    def __init__(self, ds: SegmentationDataset, seed: int, crop: int = 0, masks_dir: Path | None = None) -> None:
        self.ds, self.seed, self.crop, self.masks_dir = ds, seed, crop, masks_dir
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        s = self.ds[i]
        rng = random.Random(hash((self.seed, self.epoch, i)))
        img = s["image"]
        mask = None
        if self.masks_dir is not None:
            mask = load_mask(self.masks_dir / f"{s['id']}.png", self.ds.num_classes)
        if rng.random() < 0.5:
            img = img[:, ::-1]
            mask = None if mask is None else mask[:, ::-1]
        if self.crop:
            h, w = img.shape[:2]
            ph, pw = max(self.crop - h, 0), max(self.crop - w, 0)
            if ph or pw:
                img = np.pad(img, ((0, ph), (0, pw), (0, 0)), constant_values=0)
                mask = None if mask is None else np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
            h, w = img.shape[:2]
            y, x = rng.randint(0, h - self.crop), rng.randint(0, w - self.crop)
            img = img[y:y + self.crop, x:x + self.crop]
            mask = None if mask is None else mask[y:y + self.crop, x:x + self.crop]
        x = to_tensor(img)
        if mask is None:
            return x, torch.from_numpy(s["labels"])
        return x, torch.from_numpy(np.ascontiguousarray(mask)).long()


def _loader(ds: torch.utils.data.Dataset, batch: int, cfg: PipelineConfig, world: int
            ) -> tuple[torch.utils.data.DataLoader, torch.utils.data.Sampler]:
    if world > 1:
        sampler: torch.utils.data.Sampler = torch.utils.data.DistributedSampler(ds, shuffle=True, seed=cfg.seed,
                                                                                drop_last=True)
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        sampler = torch.utils.data.RandomSampler(ds, generator=g)
    per_proc = max(1, batch // world)
    return torch.utils.data.DataLoader(ds, batch_size=per_proc, sampler=sampler, num_workers=cfg.num_workers,
                                       drop_last=len(ds) >= per_proc * world * 2), sampler


def _train_loop(cfg: PipelineConfig, stage: str, model: torch.nn.Module, train_set: _TrainSet, batch: int,
                epochs: int, lr: float, loss_fn: Any, dev: torch.device, world: int) -> torch.nn.Module:
    """Shared SGD loop with poly LR, epoch checkpoints (resume) and DDP. Returns the trained module."""
    log = rt.get_logger(cfg.run_dir)
    if cfg.dataset != "synthetic" and cfg.crop_size <= 0 and batch > 1:
        raise ValueError(f"{stage}: images of {cfg.dataset} differ in size; set crop_size (e.g. --crop-size 512 "
                         "for train-cls, 321 for train-seg) to batch them")
    stage_dir = Path(cfg.run_dir) / stage
    loader, sampler = _loader(train_set, batch, cfg, world)
    if world > 1:
        if dev.type == "cuda":  # BatchNorm statistics over the global batch (gloo/CPU: per process)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(model)
    core = rt.unwrap(model)
    backbone = list(core.backbone.parameters())
    ids = {id(p) for p in backbone}
    rest = [p for p in core.parameters() if id(p) not in ids]
    bb_lr = lr * (0.1 if cfg.weights_path else 1.0)
    opt = torch.optim.SGD([{"params": backbone, "lr": bb_lr}, {"params": rest, "lr": lr}], momentum=0.9,
                          weight_decay=cfg.weight_decay)
    base = [bb_lr, lr]
    start = 0
    ckpt = rt.load_checkpoint(stage_dir / "checkpoint.pt")
    if ckpt is not None:
        core.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = ckpt["epoch"] + 1
        log.info(f"[{stage}] resuming from epoch {start} ({stage_dir / 'checkpoint.pt'})")
    total = epochs * len(loader)
    for epoch in range(start, epochs):
        model.train()
        train_set.epoch = epoch
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        stats = torch.zeros(2, dtype=torch.float64)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(rt.progress(loader, len(loader), f"{stage} {epoch + 1}/{epochs}", cfg.progress)):
            _poly_lr(opt, base, epoch * len(loader) + i, total)
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
            rt.save_atomic({"model": core.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
                           stage_dir / "checkpoint.pt")
        rt.barrier()
    return core


# -------------------------------------------------------------------------------------------- classifier
def build_classifier(cfg: PipelineConfig, class_names: list[str], labels: np.ndarray) -> MultiLabelClassifier:
    """The classifier of ``cfg`` for ``class_names`` (background first); ``labels`` ``[N, K-1]`` make the graph."""
    emb = adj = None
    if cfg.use_gcn:
        emb = class_name_embeddings(class_names[1:])
        adj = knowledge_graph(cfg.graph, emb, labels)
    return MultiLabelClassifier(len(class_names) - 1, cfg.backbone, cfg.width, cfg.weights_path, cfg.output_stride,
                                embeddings=emb, adjacency=adj, gcn_hidden=cfg.gcn_hidden, cam_source=cfg.cam_source)


def _cls_loss(weight: float) -> Any:
    def loss(out: dict[str, Tensor], y: Tensor) -> Tensor:
        val = F.multilabel_soft_margin_loss(out["logits"], y)
        if out["gcn_logits"] is not None:
            val = val + weight * F.multilabel_soft_margin_loss(out["gcn_logits"], y)
        return val
    return loss


def train_cls(cfg: PipelineConfig) -> Path:
    """Stage 1: train the multi-label classifier (+ knowledge GCN head). Returns ``<run>/cls/model.pt``."""
    dev = _device(cfg)
    _, world = rt.init_distributed(dev)
    log = rt.get_logger(cfg.run_dir)
    final = Path(cfg.run_dir) / "cls" / "model.pt"
    if final.is_file():
        log.info(f"[train-cls] done already: {final}")
        return final
    if rt.is_main():
        cfg.save(Path(cfg.run_dir) / "config.json")
    ds = open_dataset(cfg, cfg.train_split)
    labels = ds.image_labels()
    if rt.is_main():
        final.parent.mkdir(parents=True, exist_ok=True)
        np.save(final.parent / "train_labels.npy", labels)
    _seed_everything(cfg.seed)
    model = build_classifier(cfg, ds.class_names, labels).to(dev)
    log.info(f"[train-cls] {ds.name} {cfg.train_split}: {len(ds)} images, {ds.num_classes - 1} classes; backbone "
             f"{cfg.backbone}, knowledge GCN head {'on (' + cfg.graph + ' graph)' if cfg.use_gcn else 'off'}")
    core = _train_loop(cfg, "cls", model, _TrainSet(ds, cfg.seed, cfg.crop_size), cfg.cls_batch, cfg.cls_epochs,
                       cfg.cls_lr, _cls_loss(cfg.gcn_loss_weight), dev, world)
    if rt.is_main():
        rt.save_atomic({"model": core.state_dict(), "class_names": ds.class_names, "config": cfg.to_dict()}, final)
        log.info(f"[train-cls] saved {final}")
    rt.barrier()
    return final


def load_classifier(cfg: PipelineConfig, dev: torch.device) -> tuple[MultiLabelClassifier, list[str]]:
    """The trained classifier of the run (eval mode) and its class names."""
    path = Path(cfg.run_dir) / "cls" / "model.pt"
    ckpt = rt.load_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no trained classifier at {str(path)!r}: run train-cls first")
    labels = np.load(path.parent / "train_labels.npy")
    model = build_classifier(cfg, ckpt["class_names"], labels)
    model.load_state_dict(ckpt["model"])
    return model.to(dev).eval(), ckpt["class_names"]


# --------------------------------------------------------------------------------------------------- CAMs
@torch.no_grad()
def multiscale_cam(model: MultiLabelClassifier, image: Tensor, labels: Tensor, scales: tuple[float, ...],
                   flip: bool = True) -> tuple[Tensor, Tensor]:
    """Multi-scale (+ flip) CAMs: :func:`grmseg.ops.cam` per scale and mirror, summed and re-normalised by
    :func:`grmseg.pipeline.cam_aggregation.aggregate_cams` at the feature size and at the image size.

    Args:
        model: the classifier.  image: ``[3, H, W]`` normalised.  labels: ``[K-1]`` multi-hot.

    Returns:
        ``(cam [K-1, h, w], high_res [K-1, H, W])``: ``h, w`` the feature size at scale 1; absent classes zero.
    """
    h_img, w_img = image.shape[1:]
    w = model.cam_weights()
    lab = labels[None]
    maps, flipped = [], []
    for s in scales:
        x = image[None]
        if s != 1.0:
            x = F.interpolate(x, size=(max(1, round(h_img * s)), max(1, round(w_img * s))), mode="bilinear",
                              align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        feat = model.backbone(x)
        c = ops.cam(feat, w.to(feat.dtype), lab.expand(x.shape[0], -1).to(feat.device))
        maps += [c[:1], c[1:]] if flip else [c]
        flipped += [False, True] if flip else [False]
    stride = model.backbone.output_stride
    base = (-(-h_img // stride), -(-w_img // stride))
    strided = aggregate_cams(maps, base, flipped=flipped, labels=lab)[0]
    full = aggregate_cams(maps, (h_img, w_img), flipped=flipped, labels=lab)[0]
    return strided, full


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def make_cam(cfg: PipelineConfig) -> Path:
    """Stage 2: multi-scale + flip CAMs of ``cam_split`` -> ``<run>/cams/<id>.npz``. Returns the folder."""
    dev = _device(cfg)
    rt.init_distributed(dev)
    log = rt.get_logger(cfg.run_dir)
    model, _ = load_classifier(cfg, dev)
    ds = open_dataset(cfg, cfg.cam_split)
    out = Path(cfg.run_dir) / "cams"
    todo = [i for i in _shard(len(ds)) if not (out / f"{ds.ids[i]}.npz").is_file()]
    t0 = time.perf_counter()
    for i in rt.progress(todo, len(todo), "make-cam", cfg.progress):
        s = ds[i]
        lab = torch.from_numpy(s["labels"])
        cam, high = multiscale_cam(model, to_tensor(s["image"]).to(dev), lab.to(dev), cfg.cam_scales, cfg.cam_flip)
        keys = torch.nonzero(lab).flatten()
        _save_npz_atomic(out / f"{s['id']}.npz", keys=(keys + 1).numpy().astype(np.int64),
                         cam=cam[keys.to(dev)].cpu().numpy().astype(np.float16),
                         high_res=high[keys.to(dev)].cpu().numpy().astype(np.float16))
    rt.barrier()
    log.info(f"[make-cam] {len(todo)} new CAM files in {out} ({time.perf_counter() - t0:.1f} s; "
             f"scales {list(cfg.cam_scales)}, flip {cfg.cam_flip})")
    return out


def load_cam(path: Path) -> dict[str, np.ndarray]:
    """A CAM file: ``keys [n]`` (1-based classes), ``cam [n, h, w]``, ``high_res [n, H, W]`` (float32)."""
    if not path.is_file():
        raise FileNotFoundError(f"CAM file {str(path)!r} does not exist: run make-cam first")
    with np.load(path) as z:
        return {"keys": z["keys"], "cam": z["cam"].astype(np.float32), "high_res": z["high_res"].astype(np.float32)}


def cam_to_mask(cam: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """CAM -> label map ``[H, W]``: background where every CAM is below ``threshold``, else the argmax class
    (:func:`grmseg.pipeline.pseudo_masks.pseudo_masks` with IRN's constant background)."""
    high = torch.from_numpy(cam["high_res"])[None]
    keys = torch.from_numpy(cam["keys"]).long()
    return pm.pseudo_masks(high, bg_threshold=threshold, class_indices=keys)[0].numpy().astype(np.uint8)


# ------------------------------------------------------------------------------------- learned affinity (PSA)
class _AffSet(torch.utils.data.Dataset):
    """(image [3, H, W], confident labels [H / s, W / s] long) with flips and stride-aligned random crops."""

    def __init__(self, ds: SegmentationDataset, cams: Path, cfg: PipelineConfig, stride: int) -> None:
        self.ds, self.cams, self.cfg, self.stride = ds, cams, cfg, stride
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from grmseg.pipeline.affinity_net import confident_labels

        s = self.ds[i]
        cam = load_cam(self.cams / f"{s['id']}.npz")
        lab = confident_labels(cam["keys"], cam["cam"], self.cfg.conf_fg, self.cfg.conf_bg)
        img = s["image"]
        st = self.stride
        h, w = lab.shape
        img = np.pad(img, ((0, h * st - img.shape[0]), (0, w * st - img.shape[1]), (0, 0)))  # to a stride multiple
        rng = random.Random(hash((self.cfg.seed, self.epoch, i, "aff")))
        if rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        crop = self.cfg.crop_size // st
        if crop:
            ph, pw = max(crop - h, 0), max(crop - w, 0)
            img = np.pad(img, ((0, ph * st), (0, pw * st), (0, 0)))
            lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
            y, x = rng.randint(0, lab.shape[0] - crop), rng.randint(0, lab.shape[1] - crop)
            lab = lab[y:y + crop, x:x + crop]
            img = img[y * st:(y + crop) * st, x * st:(x + crop) * st]
        return to_tensor(img), torch.from_numpy(np.ascontiguousarray(lab)).long()


def train_aff(cfg: PipelineConfig) -> Path:
    """Stage 3a (``aff_source="affnet"``): train PSA's AffinityNet on the confident regions of the CAMs of
    ``train_split`` (run make-cam first). Returns ``<run>/aff/model.pt``."""
    from grmseg.pipeline.affinity_net import AffinityNet, affinity_loss

    dev = _device(cfg)
    _, world = rt.init_distributed(dev)
    log = rt.get_logger(cfg.run_dir)
    final = Path(cfg.run_dir) / "aff" / "model.pt"
    if final.is_file():
        log.info(f"[train-aff] done already: {final}")
        return final
    ds = open_dataset(cfg, cfg.train_split)
    cams = Path(cfg.run_dir) / "cams"
    _require_inputs("train-aff", cams, ds.ids, ".npz", "CAM file(s)", "run make-cam on the training split (cam_split)")
    _seed_everything(cfg.seed + 2)
    model = AffinityNet(cfg.backbone, cfg.width, cfg.weights_path, cfg.output_stride, cfg.aff_dim)
    cls_path = Path(cfg.run_dir) / "cls" / "model.pt"
    if cls_path.is_file() and not (final.parent / "checkpoint.pt").is_file():
        state = rt.load_checkpoint(cls_path)["model"]
        model.backbone.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    model = model.to(dev)
    log.info(f"[train-aff] AffinityNet on {len(ds)} images (confident fg > {cfg.conf_fg}, bg < {cfg.conf_bg})")

    def loss_fn(feat: Tensor, y: Tensor) -> Tensor:
        return affinity_loss(feat, y, cfg.aff_radius)[0]

    core = _train_loop(cfg, "aff", model, _AffSet(ds, cams, cfg, model.backbone.output_stride), cfg.cls_batch,
                       cfg.aff_epochs, cfg.aff_lr, loss_fn, dev, world)
    if rt.is_main():
        rt.save_atomic({"model": core.state_dict(), "config": cfg.to_dict()}, final)
        log.info(f"[train-aff] saved {final}")
    rt.barrier()
    return final


def load_affinity_net(cfg: PipelineConfig, dev: torch.device) -> torch.nn.Module:
    """The trained AffinityNet of the run (eval mode)."""
    from grmseg.pipeline.affinity_net import AffinityNet

    path = Path(cfg.run_dir) / "aff" / "model.pt"
    ckpt = rt.load_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no trained AffinityNet at {str(path)!r}: run train-aff first "
                                "(or use aff_source=classifier)")
    model = AffinityNet(cfg.backbone, cfg.width, cfg.weights_path, cfg.output_stride, cfg.aff_dim)
    model.load_state_dict(ckpt["model"])
    return model.to(dev).eval()


# --------------------------------------------------------------------------------------------- refinement
@torch.no_grad()
def refine_one(model: MultiLabelClassifier, image: Tensor, cam: dict[str, np.ndarray], cfg: PipelineConfig,
               aff_net: torch.nn.Module | None = None) -> np.ndarray:
    """Random-walk refinement of one image's CAMs into a pseudo mask.

    Affinity :func:`grmseg.ops.local_affinity` of the AffinityNet's features (``aff_net``, as trained), or of
    the classifier's features scaled by ``aff_scale`` over their mean magnitude; optionally with the image
    colour (``aff_rgb_weight``); :func:`grmseg.ops.random_walk`, then a
    background: ``"threshold"`` (IRN: walked CAMs normalised by their max, background = ``bg_threshold``) or
    ``"psa"`` (background ``(1 - max fg)^alpha`` walked with the classes).

    Args:
        image: ``[3, H, W]`` normalised.  cam: from :func:`load_cam`.

    Returns:
        uint8 ``[H, W]`` class indices.
    """
    h_img, w_img = image.shape[1:]
    keys = cam["keys"]
    if len(keys) == 0:
        return np.zeros((h_img, w_img), np.uint8)
    h, w = cam["cam"].shape[1:]
    feat = (model.backbone(image[None]) if aff_net is None else aff_net(image[None])).float()
    feat = F.interpolate(feat, size=(h, w), mode="bilinear", align_corners=False) if feat.shape[2:] != (h, w) \
        else feat
    f = feat / (feat.abs().mean() + 1e-5) * cfg.aff_scale if aff_net is None else feat
    if cfg.aff_rgb_weight > 0:
        rgb = F.adaptive_avg_pool2d((image * STD.to(image.device) + MEAN.to(image.device))[None], (h, w))
        f = torch.cat([f, rgb * cfg.aff_rgb_weight * f.shape[1] / 3], dim=1)
    aff = ops.local_affinity(f, cfg.aff_radius)
    c = torch.from_numpy(cam["cam"]).to(feat.device)[None]
    if cfg.bg_mode not in ("threshold", "psa"):
        raise ValueError(f"bg_mode must be 'threshold' or 'psa', got {cfg.bg_mode!r}")
    background = {"bg_threshold": cfg.bg_threshold, "bg_alpha": None} if cfg.bg_mode == "threshold" else \
        {"bg_threshold": None, "bg_alpha": cfg.bg_alpha}
    scores = pm.propagate(c, aff, beta=cfg.rw_beta, steps=cfg.rw_steps, **background)  # [1, 1 + n, h, w]
    up = F.interpolate(scores, size=(h_img, w_img), mode="bilinear", align_corners=False)
    labels = pm.scores_to_labels(up, class_indices=torch.from_numpy(keys).long().to(up.device))
    return labels[0].cpu().numpy().astype(np.uint8)


def refine(cfg: PipelineConfig) -> Path:
    """Stage 3: affinity + random walk -> pseudo masks ``<run>/pseudo/<id>.png`` (atomic writes)."""
    dev = _device(cfg)
    rt.init_distributed(dev)
    log = rt.get_logger(cfg.run_dir)
    model, _ = load_classifier(cfg, dev)
    if cfg.aff_source not in ("classifier", "affnet"):
        raise ValueError(f"aff_source must be 'classifier' or 'affnet', got {cfg.aff_source!r}")
    aff_net = load_affinity_net(cfg, dev) if cfg.aff_source == "affnet" else None
    ds = open_dataset(cfg, cfg.cam_split)
    cams, out = Path(cfg.run_dir) / "cams", Path(cfg.run_dir) / "pseudo"
    pal = voc_palette()
    todo = [i for i in _shard(len(ds)) if not (out / f"{ds.ids[i]}.png").is_file()]
    t0 = time.perf_counter()
    for i in rt.progress(todo, len(todo), "refine", cfg.progress):
        s = ds[i]
        mask = refine_one(model, to_tensor(s["image"]).to(dev), load_cam(cams / f"{s['id']}.npz"), cfg, aff_net)
        save_png_atomic(out / f"{s['id']}.png", mask, pal)
    rt.barrier()
    log.info(f"[refine] {len(todo)} new pseudo masks in {out} ({time.perf_counter() - t0:.1f} s; random walk "
             f"backend {ops.selected('random_walk_forward', dev)})")
    return out


# ----------------------------------------------------------------------------------------------- segmentation
def build_segmenter(cfg: PipelineConfig, class_names: list[str], labels: np.ndarray) -> SegmentationNet:
    """The segmentation net of ``cfg``; the GRM nodes are the K classes (background first)."""
    emb = adj = None
    if cfg.use_grm:
        full = class_name_embeddings(class_names)
        emb = full if cfg.grm_embeddings else None
        with_bg = np.concatenate([np.ones((labels.shape[0], 1), np.float32), labels], axis=1)
        adj = knowledge_graph(cfg.graph, full, with_bg)
    return SegmentationNet(len(class_names), cfg.backbone, cfg.width, cfg.weights_path, cfg.output_stride,
                           cfg.aspp_channels, cfg.aspp_rates, cfg.use_grm, emb, adj, cfg.grm_node_dim,
                           cfg.grm_key_dim, cfg.grm_gcn_layers)


def _seg_dir(cfg: PipelineConfig) -> str:
    return "seg" if cfg.use_grm else "seg_nogrm"


def train_seg(cfg: PipelineConfig) -> Path:
    """Stage 4: train the segmentation net (GRM on or off) on the pseudo masks. Returns its model path."""
    dev = _device(cfg)
    _, world = rt.init_distributed(dev)
    log = rt.get_logger(cfg.run_dir)
    stage = _seg_dir(cfg)
    final = Path(cfg.run_dir) / stage / "model.pt"
    if final.is_file():
        log.info(f"[train-seg] done already: {final}")
        return final
    ds = open_dataset(cfg, cfg.train_split)
    pseudo = Path(cfg.run_dir) / "pseudo"
    _require_inputs("train-seg", pseudo, ds.ids, ".png", "pseudo mask(s)",
                    "run make-cam and refine on the training split (cam_split)")
    labels_path = Path(cfg.run_dir) / "cls" / "train_labels.npy"
    labels = np.load(labels_path) if labels_path.is_file() else ds.image_labels()
    _seed_everything(cfg.seed + 1)
    model = build_segmenter(cfg, ds.class_names, labels)
    cls_path = Path(cfg.run_dir) / "cls" / "model.pt"
    if cfg.seg_init_from_cls and cls_path.is_file() and not (final.parent / "checkpoint.pt").is_file():
        state = rt.load_checkpoint(cls_path)["model"]
        bb = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        model.backbone.load_state_dict(bb)
        log.info("[train-seg] backbone initialised from the trained classifier")
    model = model.to(dev)
    log.info(f"[train-seg] {len(ds)} images with pseudo masks; GRM {'on' if cfg.use_grm else 'off'}")

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)

    core = _train_loop(cfg, stage, model, _TrainSet(ds, cfg.seed, cfg.crop_size, masks_dir=pseudo), cfg.seg_batch,
                       cfg.seg_epochs, cfg.seg_lr, loss_fn, dev, world)
    if rt.is_main():
        rt.save_atomic({"model": core.state_dict(), "class_names": ds.class_names, "config": cfg.to_dict()}, final)
        log.info(f"[train-seg] saved {final}")
    rt.barrier()
    return final


def load_segmenter(cfg: PipelineConfig, dev: torch.device) -> SegmentationNet:
    """The trained segmentation net of the run (eval mode)."""
    path = Path(cfg.run_dir) / _seg_dir(cfg) / "model.pt"
    ckpt = rt.load_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no trained segmentation net at {str(path)!r}: run train-seg first")
    labels_path = Path(cfg.run_dir) / "cls" / "train_labels.npy"
    labels = np.load(labels_path) if labels_path.is_file() else np.ones((1, len(ckpt["class_names"]) - 1), np.float32)
    model = build_segmenter(cfg, ckpt["class_names"], labels)
    model.load_state_dict(ckpt["model"])
    return model.to(dev).eval()


@torch.no_grad()
def predict(model: SegmentationNet, image: Tensor, flip: bool = True) -> np.ndarray:
    """``[3, H, W]`` normalised -> uint8 ``[H, W]`` class map (softmax averaged with the flipped image)."""
    x = image[None]
    if flip:
        x = torch.cat([x, x.flip(-1)])
    p = model(x).softmax(1)
    p = p[0] + p[1].flip(-1) if flip else p[0]
    return p.argmax(0).cpu().numpy().astype(np.uint8)


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(cfg: PipelineConfig, write_report: bool = True) -> dict[str, Any]:
    """Stage 5: mIoU + confusion matrices of the CAMs and pseudo masks (``cam_split``) and of the segmentation
    net (``val_split``, predictions written to ``<run>/seg_pred``). Writes ``<run>/eval/``; returns the results
    ``{"CAM": summary, "pseudo mask": summary, "segmentation": summary}`` (missing stages left out)."""
    dev = _device(cfg)
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
    for i in rt.progress(range(len(ds)), len(ds), "eval cam/pseudo", cfg.progress):
        s = ds[i]
        if s["mask"] is None:
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
    seg_path = run / _seg_dir(cfg) / "model.pt"
    if seg_path.is_file():
        model = load_segmenter(cfg, dev)
        val = open_dataset(cfg, cfg.val_split)
        seg_m = SegmentationMeter(names)
        pal = voc_palette()
        n = 0
        for i in rt.progress(range(len(val)), len(val), "eval seg", cfg.progress):
            s = val[i]
            pred = predict(model, to_tensor(s["image"]).to(dev))
            save_png_atomic(run / f"{_seg_dir(cfg)}_pred" / f"{s['id']}.png", pred, pal)
            if s["mask"] is not None:
                seg_m.update(pred, s["mask"])
                n += 1
        if n:
            label = "segmentation (GRM)" if cfg.use_grm else "segmentation (no GRM)"
            results[label] = {**seg_m.summary(), "split": cfg.val_split, "images": n}
    out = run / "eval"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".eval.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"class_names": names, "results": results}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "eval.json")
    for key, summary in results.items():
        np.savetxt(out / f"confusion_{key.split()[0].lower()}.csv", np.asarray(summary["confusion"]), fmt="%d",
                   delimiter=",", header=",".join(names))
    table = format_table({f"{k} ({v['split']})": v for k, v in results.items()}, names)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    log.info(f"[eval] mIoU (%), run {run}:\n{table}")
    if write_report:
        from grmseg.pipeline.report import write_report as _write

        _write(cfg, results)
    rt.barrier()
    return results
