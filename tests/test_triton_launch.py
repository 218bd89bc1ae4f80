"""The Triton launch layer (grmseg.ops.impl.triton_launch) and the launch policy it serves: the fixed choice falls
back when the GPU refuses a config, every GPU config carries the register cap, the config lists are pruned per
GPU, the random walk's blocks fill the GPU, and the GPU block shapes compute the right thing (run in the
interpreter here, on CUDA tensors where a GPU is)."""

from __future__ import annotations

import pytest
import torch

from grmseg import reference
from grmseg.ops.impl import triton as tri
from grmseg.ops.impl import triton_launch as tl
from grmseg.ops.impl import triton_wsss as tw

triton = pytest.importorskip("triton")
H90, A100 = tl.Target.gpu(90), tl.Target.gpu(80)


def test_targets_and_register_cap():
    assert (H90.smem, A100.smem, H90.sms, A100.sms) == (232448, 166912, 132, 108)
    assert tl.target_of(torch.device("cpu")).interpreter
    capped = tl.with_register_cap([{"num_warps": 4}, {"num_warps": 8}, {"num_warps": 16, "maxnreg": 96}], H90)
    assert [c["maxnreg"] for c in capped] == [255, 255, 96]
    assert "maxnreg" not in tl.with_register_cap([{"num_warps": 4}], tl.INTERPRETER)[0]


def test_fixed_choice_falls_back_when_the_gpu_refuses_a_config(monkeypatch):
    """OutOfResources at the first config: the next one runs, and later launches start there."""
    from triton.runtime.errors import OutOfResources

    calls = []

    class FakeKernel:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                calls.append((grid, kwargs["BLOCK"], kwargs.get("maxnreg")))
                if kwargs["BLOCK"] == 256:
                    raise OutOfResources(300000, 232448, "shared memory")

            return run

    monkeypatch.setattr(tl, "_kernel", lambda module, name: FakeKernel())
    monkeypatch.setenv("GRMSEG_TRITON_AUTOTUNE", "0")
    configs = [{"BLOCK": 256, "num_warps": 8}, {"BLOCK": 128, "num_warps": 4}]
    for _ in range(2):
        tl.launch("m", "k", lambda m: (1024 // m["BLOCK"],), (), {}, configs, H90, key=(), launch_key=("x",))
    assert calls == [((4,), 256, 255), ((8,), 128, 255), ((8,), 128, 255)]
    calls.clear()
    with pytest.raises(OutOfResources):
        tl.launch("m", "k", lambda m: (1,), (), {}, configs[:1], H90, key=(), launch_key=("y",))
    with pytest.raises(ValueError, match="no config"):
        tl.launch("m", "k", lambda m: (1,), (), {}, [], H90, key=())


def test_config_lists_fit_each_gpu_and_keep_the_partials_consistent():
    for target in (H90, A100, tl.Target.gpu(86)):
        for kind in ("project_fwd", "project_bwd", "reproject_bwd"):
            for dtype in (torch.float32, torch.bfloat16):
                for k in (16, 21, 33, 81, 128):
                    block_k = tri._block_k(k)
                    esize = torch.empty((), dtype=dtype).element_size()
                    cfgs = tri._pixel_configs(kind, block_k, 512, dtype, target)
                    fit = [tri._pixel_smem(kind, c, block_k, esize) <= target.smem for c in cfgs]
                    # the tables fit sm_80 and sm_90; a smaller GPU gets the config of the smallest estimate
                    assert all(fit) if target.arch in (80, 90) else (all(fit) or len(cfgs) == 1)
                    assert all(not c["FUSED"] or c["BLOCK_CO"] >= 512 for c in cfgs)
        for dtype in (torch.float32, torch.float16):
            adj = tri._graph_configs("bwd_adj", 128, dtype, target)
            assert adj
    # no fused config that could never fit: 2048 channels are never fused
    assert not any(c["FUSED"] for c in tri._pixel_configs("project_fwd", 32, 2048, torch.bfloat16, H90))
    assert not any(c["FUSED"] for c in tri._reproject_fwd_configs(32, 2048, torch.bfloat16, H90))
    # the backward of graph_conv: the recorded adjacency launches of one call share BLOCK_D (the partials' shape)
    z = torch.empty(8, 81, 256, device="meta")
    with tl.recording(H90, autotune=True) as rec:
        out = tri.graph_conv_forward(z, torch.empty(81, 81, device="meta"), torch.empty(256, 256, device="meta"),
                                     None, "relu")
        tri.graph_conv_backward(out, out, z, torch.empty(81, 81, device="meta"), torch.empty(256, 256, device="meta"),
                                None, "relu")
    adj_launch = next(launch for launch in rec if launch.kernel == "graph_conv_bwd_adj_kernel")
    assert adj_launch.tuned and len({c["BLOCK_D"] for c in adj_launch.configs}) == 1
    assert [launch.kernel for launch in rec] == ["graph_conv_fwd_kernel", "graph_conv_bwd_pre_kernel",
                                                 "graph_conv_bwd_adj_kernel", "graph_conv_bwd_z_kernel",
                                                 "graph_conv_bwd_w_kernel"]


@pytest.mark.parametrize("size", [32, 64, 128])
def test_random_walk_launch_fills_the_gpu(size):
    """Per-pass launches: at least 4 programs per SM of an H100 for one 21-class image; the fused walk of a small
    map: a program per (image, class)."""
    d = len(reference.affinity_offsets(5))
    cam, aff = torch.empty(1, 21, size, size, device="meta"), torch.empty(1, d, size, size, device="meta")
    with tl.recording(H90, autotune=False) as rec:
        tw.random_walk_forward(cam, aff, 8.0, 256)
    walk = rec[-1]
    programs = walk.grids[0][0]
    if size * size <= tw.FUSED_WALK_MAX_PIXELS:
        assert walk.kernel == "rw_fused_kernel" and programs == 21
    else:
        assert walk.kernel == "rw_step_kernel" and programs >= 4 * H90.sms


@pytest.mark.skipif(not (tl.interpreting() or torch.cuda.is_available()), reason="needs the interpreter or a GPU")
@pytest.mark.parametrize("fused", [True, False])
def test_random_walk_gpu_blocks_match_the_oracle(monkeypatch, fused):
    """The blocks the GPU policy picks (one class per fused program; 4 classes x 32 pixels per pass program),
    run where Triton runs here."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    h, w, k = 9, 23, 3
    blocks = tw._walk_blocks(1, k, h * w, 68, H90, fused)
    monkeypatch.setattr(tw, "_walk_blocks", lambda *args: blocks)
    gen = torch.Generator().manual_seed(0)
    cam = torch.rand(2, k, h, w, generator=gen)
    aff = 0.1 + 0.9 * torch.rand(2, len(reference.affinity_offsets(5)), h, w, generator=gen)
    out = tw.random_walk_forward(cam.to(device), aff.to(device), 8.0, 3, fused=fused)
    want = reference.random_walk(cam.double(), aff.double(), 8.0, 3)
    torch.testing.assert_close(out.double().cpu(), want, rtol=1e-4, atol=1e-5)
