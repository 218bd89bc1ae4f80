"""``python -m grmseg layer-demo``: GRM inside a torchvision DeepLabV3, one training step on a random batch, timed.

(The pipeline demo, ``python -m grmseg demo``, is :func:`grmseg.pipeline.runner.run_demo`.)
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from grmseg import ops
from grmseg.models import deeplabv3_with_grm
from grmseg.ops._backends import KEEP_VARIANTS

GRM_KERNELS = ("grm_project_forward", "grm_project_backward", "graph_conv_forward", "graph_conv_backward",
               "grm_reproject_forward", "grm_reproject_backward")


def kernels_run(device_type: str, keep_assignment: bool = True) -> tuple[str, ...]:
    """The kernels a training step of ``grmseg.GRM`` runs on ``device_type``: :data:`GRM_KERNELS`, with the keep
    variants of the projection's and reprojection's where the layer keeps their assignments."""
    out = []
    for kernel in GRM_KERNELS:
        op = kernel.rsplit("_", 1)[0]
        keep = kernel in KEEP_VARIANTS and keep_assignment and ops.keeps_assignment(op, device_type)
        out.append(KEEP_VARIANTS[kernel] if keep else kernel)
    return tuple(out)


def run_demo(batch: int = 2, size: int = 129, num_classes: int = 21, device: str = "cpu", seed: int = 0) -> dict:
    """Build DeepLabV3-ResNet50 + GRM, run one SGD step on a random batch and report timings.

    Args:
        batch: images per batch.  size: image side in pixels (odd sizes welcome).
        num_classes: classes, and GRM nodes.  device: ``"cpu"`` or ``"cuda"``.  seed: RNG seed.

    Returns:
        ``{"loss": float, "timings_ms": {...}, "backends": {kernel: backend}}``; also printed.
    """
    if batch < 2:
        raise ValueError(f"run_demo: batch must be >= 2 (BatchNorm after the ASPP image pooling sees one value "
                         f"per channel per image in training mode), got {batch}")
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = deeplabv3_with_grm(num_classes=num_classes).to(dev).train()
    grm = next(m for m in model.modules() if m.__class__.__name__ == "GRM")
    images = torch.randn(batch, 3, size, size, device=dev)
    target = torch.randint(0, num_classes, (batch, size, size), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    grm_ms: list[float] = []
    feat_shape: list[int] = []

    def before_grm(module: torch.nn.Module, inputs: tuple) -> None:
        feat_shape[:] = list(inputs[0].shape)
        grm_ms.append(time.perf_counter())

    grm.register_forward_pre_hook(before_grm)
    grm.register_forward_hook(lambda *_: grm_ms.append((time.perf_counter() - grm_ms.pop()) * 1e3))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    logits = model(images)["out"]
    loss = F.cross_entropy(logits, target)
    sync()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    t3 = time.perf_counter()

    result = {
        "loss": loss.item(),
        "timings_ms": {"forward": (t1 - t0) * 1e3, "backward": (t2 - t1) * 1e3, "optimizer": (t3 - t2) * 1e3,
                       "grm_forward": grm_ms[0]},
        "backends": {k: ops.selected(k, dev) for k in kernels_run(torch.device(dev).type, grm.keep_assignment)},
    }
    print(f"grmseg layer-demo: DeepLabV3-ResNet50 + GRM(in_channels={grm.in_channels}, num_nodes={grm.num_nodes}), "
          f"batch {batch} x 3 x {size} x {size} on {dev}")
    print("\nbackends on this machine:")
    for status in ops.backends().values():
        print(f"  {status}")
    print("\nwhat ran where (GRM kernels):")
    for kernel, backend in result["backends"].items():
        print(f"  {kernel:<24} {backend}")
    print(f"\none training step: loss {result['loss']:.4f}")
    for name, ms in result["timings_ms"].items():
        print(f"  {name:<12} {ms:9.1f} ms")
    print(f"  (GRM forward on features {feat_shape})")
    return result
