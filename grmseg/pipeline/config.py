"""The pipeline configuration: one dataclass, filled from defaults < a JSON/YAML file < command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass
class PipelineConfig:
    """Every setting of every stage; the resolved config is saved as ``<run_dir>/config.json``."""

    # run and data
    run_dir: str = "runs/wsss"
    dataset: str = "synthetic"  # synthetic | voc | coco
    data_root: str | None = None
    cls_labels: str | None = None  # IRN cls_labels.npy / .json / .txt; default: labels from the masks
    train_split: str = "train"  # classifier and segmentation training (VOC: train_aug)
    cam_split: str = "train"  # CAMs and pseudo masks are made (and scored) on this split
    val_split: str = "val"  # the segmentation net is scored here
    syn_train_images: int = 512
    syn_val_images: int = 128
    syn_size: int = 64
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 0
    threads: int = 0  # CPU threads per process (0: torch's default; 1 is fastest on a busy 2-core machine)
    progress: bool = True
    # augmentation (every training stage): random rescale, flip, random crop with padding
    scale_range: tuple[float, ...] = (0.5, 1.5)  # rescale factors (lo, hi); 1,1 turns rescaling off
    cls_crop_size: int | None = None  # None: the dataset's default (voc/coco 512, synthetic: syn_size); 0: none
    irn_crop_size: int | None = None  # None: voc/coco 512, synthetic: syn_size
    seg_crop_size: int | None = None  # None: voc/coco 321, synthetic: syn_size
    # classifier
    backbone: str = "tiny"  # tiny | resnet18 | resnet34 | resnet50 | resnet101
    width: int = 16  # tiny backbone width
    weights_path: str | None = None  # torchvision ResNet state dict (never downloaded)
    output_stride: int = 16
    use_gcn: bool = True  # knowledge GCN head (ML-GCN) beside the 1x1 classifier
    gcn_hidden: int = 256
    gcn_loss: str = "focal"  # loss of the GCN branch: focal (the paper's code, gamma focal_gamma) | soft_margin
    gcn_loss_weight: float = 1e-4  # the paper's code: 1e-4
    focal_gamma: float = 2.0
    graph: str = "cooccurrence"  # knowledge graph for GCN head and GRM: cooccurrence | knn | none
    cam_source: str = "classifier"  # classifier | gcn | both
    cls_epochs: int = 10
    cls_batch: int = 32
    cls_lr: float = 0.05
    weight_decay: float = 1e-4
    cam_method: str = "cam"  # cam | recam (ReCAM: a re-activation stage after the classifier, CVPR 2022)
    recam_epochs: int = 4
    recam_lr: float = 5e-4  # the ReCAM predictor's; the classifier trains at 0.1 x this
    recam_loss_weight: float = 1.0
    recam_batch: int | None = None  # None: cls_batch
    # CAMs
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    cam_flip: bool = True
    cam_stride: int = 4  # the grid of the saved ``cam``, of the boundary map and of the random walk (IRN: 4)
    cam_eval_thres: float = 0.2  # background threshold when CAMs are scored as masks
    # pseudo masks: affinity + random walk
    aff_source: str = "irn"  # irn (IRN boundary net, train-irn) | affnet (PSA AffinityNet, train-aff) | classifier
    conf_fg: float = 0.30  # confident foreground for train-irn / train-aff: CAM above this (IRN 0.30)
    conf_bg: float = 0.05  # confident background: every CAM below this (IRN 0.05)
    conf_crf: bool = True  # refine the confident regions with IRN's dense CRF on the image
    irn_epochs: int = 3  # train-irn
    irn_batch: int = 32
    irn_lr: float = 0.1
    irn_radius: int = 10  # radius of the training pairs (IRN: 10)
    irn_init: str = "classifier"  # backbone of the boundary net: classifier (trained) | weights_path (IRN)
    irn_freeze_backbone: bool = True  # IRN: frozen (ImageNet features); False: trained at irn_backbone_lr x irn_lr
    irn_backbone_lr: float = 0.1
    aff_epochs: int = 5  # train-aff
    aff_lr: float = 0.05
    aff_dim: int = 64
    aff_scale: float = 1.0  # aff_source classifier: features divided by their mean |value|, times this
    aff_rgb_weight: float = 0.0  # aff_source classifier / affnet: > 0 adds the image colour to the features
    aff_radius: int = 5  # radius of the affinities of the random walk
    rw_beta: float = 10.0
    rw_steps: int = 256
    bg_mode: str = "threshold"  # threshold (IRN: after the walk) | psa ((1 - max fg)^alpha, walked too)
    bg_threshold: float = 0.25  # IRN sem_seg_bg_thres
    bg_alpha: float = 16.0  # PSA
    refine_crf: bool = False  # end refine with a dense CRF of the walked scores on the image (PSA's --out_crf)
    crf_iterations: int = 10  # mean-field iterations of the dense CRFs (refine_crf, eval_crf)
    # segmentation
    seg_backbone: str | None = None  # None: the classifier's backbone
    seg_weights_path: str | None = None  # None: weights_path
    seg_epochs: int = 10
    seg_iterations: int = 0  # > 0: train this many SGD steps instead of seg_epochs epochs (DeepLab: 20000)
    seg_batch: int = 16
    seg_lr: float = 0.01
    aspp_channels: int = 256
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    use_grm: bool = True
    grm_node_dim: int = 256
    grm_key_dim: int = 64
    grm_gcn_layers: int = 1
    grm_embeddings: bool = True
    seg_init_from_cls: bool = True  # start the segmentation backbone from the trained classifier's
    # evaluation and report
    eval_crf: bool = False  # also score the predictions after a dense CRF (the paper's test-time CRF)
    num_figures: int = 6

    def crop_size(self, stage: str) -> int:
        """The crop side of ``stage`` (``"cls"``, ``"irn"``, ``"seg"``): the setting, or the dataset's default."""
        value = {"cls": self.cls_crop_size, "irn": self.irn_crop_size, "seg": self.seg_crop_size}[stage]
        if value is not None:
            return value
        if self.dataset == "synthetic":
            return self.syn_size
        return 321 if stage == "seg" else 512

    def seg_backbone_name(self) -> str:
        """The segmentation net's backbone (``seg_backbone``, else ``backbone``)."""
        return self.seg_backbone or self.backbone

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON (atomically)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, p)

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with ``changes`` applied (validated)."""
        return PipelineConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        """Build from a dict; ValueError naming unknown keys or values of the wrong type."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        out = {}
        for key, value in data.items():
            out[key] = _coerce(key, hints[key], value)
        return cls(**out)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Check/convert ``value`` to the field type ``hint``."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"config key {key!r} must not be null")
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} must be a list, got {value!r}")
        return tuple(args[0](v) for v in value)
    base = next((a for a in args if a is not type(None)), hint)
    if base is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r} must be true/false, got {value!r}")
        return value
    try:
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return base(value)
    except (TypeError, ValueError):
        raise ValueError(f"config key {key!r} must be {base.__name__}, got {value!r}") from None


PRESETS = ("voc", "coco")


def preset_path(name: str) -> Path:
    """The shipped preset file of ``name`` (``"voc"``, ``"coco"``): the GRM paper's recipe for that dataset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; shipped presets: {list(PRESETS)}")
    return Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON file, or a YAML file (``.yaml``/``.yml``, needs PyYAML) into a dict. A shipped preset name
    (``voc``, ``coco``) that is not a file here reads that preset."""
    p = Path(path)
    if not p.is_file() and str(path) in PRESETS:
        p = preset_path(str(path))
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist (shipped presets: {list(PRESETS)})")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(f"config file {str(p)!r} is YAML: pip install pyyaml, or use JSON") from None
        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise TypeError(f"config file {str(p)!r} must hold a mapping, got {type(data).__name__}")
    return data


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and one ``--<key>`` flag per config field (default: unset, i.e. keep the file's)."""
    parser.add_argument("--config", help="JSON or YAML file of config keys, or a shipped preset: voc, coco (the "
                        "paper's recipe); flags override it")
    hints = typing.get_type_hints(PipelineConfig)
    for f in fields(PipelineConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = typing.get_args(hint)
        default = f.default if f.default is not dataclasses.MISSING else None
        helptext = f"(default: {default})"
        if hint is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif typing.get_origin(hint) is tuple:
            parser.add_argument(flag, dest=f.name, default=None, help=f"comma-separated {helptext}")
        else:
            base = next((a for a in args if a is not type(None)), hint)
            parser.add_argument(flag, dest=f.name, type=base, default=None, help=helptext)


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> PipelineConfig:
    """defaults < ``base`` (a preset) < the run folder's ``config.json`` (written by its first stage) <
    ``--config`` file < flags: a later stage given only ``--run-dir`` continues with the run's settings."""
    file = load_config_file(args.config) if getattr(args, "config", None) else {}
    flags = {f.name: getattr(args, f.name) for f in fields(PipelineConfig) if getattr(args, f.name, None) is not None}
    data: dict[str, Any] = dict(base or {})
    run_dir = flags.get("run_dir", file.get("run_dir", data.get("run_dir", PipelineConfig.run_dir)))
    saved = Path(run_dir) / "config.json"
    if saved.is_file():
        data.update(load_config_file(saved))
    data.update(file)
    data.update(flags)
    return PipelineConfig.from_dict(data)


def demo_preset() -> dict[str, Any]:
    """The synthetic-data settings of ``python -m grmseg demo``: a few minutes on a 2-core CPU.

    IRN's recipe (CRF-refined confident regions, boundary net, beta 10) on the tiny backbone, with PSA's CRF on
    the pseudo masks and the paper's test-time CRF. The walk takes 2 steps: on the 16 x 16 grid of a 64-pixel
    image, radius 5 crosses an object in one step (IRN's 256 steps are for 128 x 128 grids). The CAM threshold,
    the confident-region thresholds, the background threshold and the steps were picked once on 150 training
    images with their masks (as WSSS papers tune them on the training set); see the README's demo section.
    """
    return {
        "dataset": "synthetic", "threads": 1, "syn_train_images": 1024, "syn_val_images": 128, "syn_size": 64,
        "cls_crop_size": 64, "irn_crop_size": 64, "seg_crop_size": 64,
        "backbone": "tiny", "width": 16, "gcn_hidden": 64, "cls_epochs": 15, "cls_batch": 32, "cls_lr": 0.05,
        "cam_scales": (1.0, 1.5), "cam_eval_thres": 0.5, "conf_fg": 0.5, "conf_bg": 0.1, "conf_crf": True,
        "aff_source": "irn", "irn_epochs": 3, "irn_batch": 32, "irn_lr": 0.1, "irn_radius": 5, "aff_radius": 5,
        "rw_beta": 10.0, "rw_steps": 2, "bg_threshold": 0.2, "refine_crf": True, "eval_crf": True,
        "seg_epochs": 10, "seg_batch": 16, "seg_lr": 0.02, "aspp_channels": 48, "aspp_rates": (2, 4),
        "grm_node_dim": 48, "grm_key_dim": 32, "num_figures": 6,
    }


def tiny_preset() -> dict[str, Any]:
    """A very small synthetic config for the tests (seconds per stage)."""
    return {**demo_preset(), "syn_train_images": 24, "syn_val_images": 8, "syn_size": 32, "width": 4,
            "gcn_hidden": 8, "cls_epochs": 1, "cls_batch": 8, "cam_scales": (1.0,), "irn_epochs": 1, "irn_batch": 8,
            "irn_radius": 3, "rw_steps": 8, "aff_radius": 3, "seg_epochs": 1, "seg_batch": 8, "aspp_channels": 8,
            "aspp_rates": (1,), "grm_node_dim": 8, "grm_key_dim": 4, "num_figures": 2, "progress": False}
