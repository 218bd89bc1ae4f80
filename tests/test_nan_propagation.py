"""Non-finite input: every backend puts NaN exactly where the reference's math does, and nowhere else.

The rule (DESIGN.md, Conventions): a max or ReLU over values holding a NaN is NaN (``torch.amax``,
``torch.relu``), so one NaN feature pixel makes every CAM of its image NaN for the classes present (their spatial
maximum is NaN) and leaves the absent ones 0 (absent classes are 0 by definition); a NaN boundary pixel makes NaN
the affinity of every offset whose path crosses it; entries whose partner lies outside the map are 0.
"""

from __future__ import annotations

import pytest
import torch

from grmseg import ops
from grmseg import reference as ref
from grmseg.ops import backends

NAN = float("nan")


def _backends() -> list[tuple[str, str]]:
    out = [("csrc", "cpu")]
    if backends()["triton"].available.get("cpu", False):
        out.append(("triton", "cpu"))
    if torch.cuda.is_available():
        out += [("csrc", "cuda"), ("triton", "cuda")]
    return out


BACKENDS = _backends()


def _same_nan_and_values(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-5) -> None:
    got = got.cpu().double()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (
        f"{int(torch.isnan(got).sum())} NaN, the reference has {int(torch.isnan(want).sum())}"
    )
    torch.testing.assert_close(got.nan_to_num(7.0), want.nan_to_num(7.0), rtol=1e-4, atol=atol)


def _feat(b: int, c: int, h: int, w: int, nan_at: list[tuple[int, int, int, int]]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(b, c, h, w, generator=g)
    for i in nan_at:
        feat[i] = NAN
    return feat


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("with_labels", [False, True])
def test_cam_nan_makes_the_present_maps_of_its_image_nan(backend, device, with_labels):
    feat = _feat(3, 5, 7, 9, [(0, 1, 2, 3)])  # image 0 has a NaN pixel; images 1, 2 do not
    weight = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]]) if with_labels else None
    want = ref.cam(feat.double(), weight.double(), labels)
    got = ops.cam(feat.to(device), weight.to(device), None if labels is None else labels.to(device),
                  backend=backend)
    _same_nan_and_values(got, want)
    nan_maps = torch.isnan(want).flatten(2).all(dim=2)
    present = torch.ones(4, dtype=torch.bool) if labels is None else labels[0] != 0
    assert torch.equal(nan_maps[0], present) and not nan_maps[1:].any()
    if labels is not None:
        assert (want[0, ~present] == 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_local_affinity_nan_reaches_only_the_pairs_of_its_pixel(backend, device):
    feat = _feat(2, 3, 8, 11, [(1, 2, 4, 5), (0, 0, 0, 0)])
    want = ref.local_affinity(feat.double(), 4)
    got = ops.local_affinity(feat.to(device), 4, backend=backend)
    _same_nan_and_values(got, want)
    assert 0 < int(torch.isnan(want).sum()) < want.numel() // 4
    outside = ref.local_affinity(torch.zeros(2, 3, 8, 11, dtype=torch.float64), 4) == 0  # exp(0) = 1 inside
    assert (want[outside] == 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_boundary_affinity_nan_reaches_every_path_through_it(backend, device):
    g = torch.Generator().manual_seed(2)
    bd = torch.rand(2, 1, 9, 10, generator=g)
    bd[0, 0, 4, 4] = NAN
    bd[1, 0, 8, 9] = NAN  # a corner: only offsets that end there
    want = ref.boundary_affinity(bd.double(), 5)
    got = ops.boundary_affinity(bd.to(device), 5, backend=backend)
    _same_nan_and_values(got, want)
    # IRN's wide paths: many more NaN than the pairs whose end points are the NaN pixel
    ends = ref.boundary_affinity(torch.zeros_like(bd, dtype=torch.float64), 5)
    assert int(torch.isnan(want[0]).sum()) > 2 * len(ref.affinity_offsets(5))
    assert (want[ends == 0] == 0).all()  # outside the map: 0 even beside a NaN


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_random_walk_carries_nan_along_the_walk(backend, device):
    g = torch.Generator().manual_seed(3)
    cam = torch.rand(1, 3, 7, 8, generator=g)
    cam[0, 1, 3, 3] = NAN
    aff = ref.local_affinity(torch.randn(1, 4, 7, 8, generator=g), 3)
    want = ref.random_walk(cam.double(), aff.double(), beta=8.0, steps=2)
    got = ops.random_walk(cam.to(device), aff.to(device), beta=8.0, steps=2, backend=backend)
    _same_nan_and_values(got, want)
    assert torch.isnan(want[0, 1]).any() and not torch.isnan(want[0, 0]).any()
