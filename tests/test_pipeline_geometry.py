"""The geometry rule of every stage: a stride-s cell i covers pixels [s i, s i + s), for any image size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grmseg.geometry import cell_centres, resample, rescaled_size, strided_size, strided_up_size, upsample_to_image
from grmseg.models.backbones import build_backbone
from grmseg.pipeline.cam_aggregation import ScaledCam, aggregate_cams, multiscale_cams
from grmseg.pipeline.transforms import Augment, sample_rng

ODD_SIZES = [(61, 95), (70, 83), (63, 77), (93, 66)]  # none a multiple of 16 (nor of 4)


def one_hot_cells(h: int, w: int) -> torch.Tensor:
    """``[1, h * w, h, w]``: channel ``i * w + j`` is 1 at cell (i, j) only."""
    return torch.eye(h * w, dtype=torch.float64).reshape(1, h * w, h, w)


def test_sizes():
    assert strided_size((61, 95), 4) == (16, 24) and strided_size((64, 64), 16) == (4, 4)
    assert strided_up_size((61, 95), 16) == (64, 96) and strided_up_size((70, 83), 4) == (72, 84)
    assert rescaled_size((61, 95), 0.5) == (30, 48) and rescaled_size((3, 3), 0.1) == (1, 1)
    with pytest.raises(ValueError, match="stride"):
        strided_size((4, 4), 0)


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("stride", [4, 16])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_one_hot_cell_lands_on_its_stride_block(size, stride, mode):
    h, w = strided_size(size, stride)
    up = upsample_to_image(one_hot_cells(h, w), stride, size, mode=mode)
    assert up.shape[-2:] == size
    winner = up[0].argmax(0)
    ys, xs = np.mgrid[0:size[0], 0:size[1]]
    expected = (ys // stride) * w + xs // stride
    assert np.array_equal(winner.numpy(), expected)


def test_upsample_rejects_a_map_of_another_grid():
    with pytest.raises(ValueError, match="stride-16 map"):
        upsample_to_image(torch.zeros(1, 1, 4, 4), 16, (70, 70))


@pytest.mark.parametrize("size", ODD_SIZES)
def test_resample_at_scale_one_is_the_exact_upsampling(size):
    h, w = strided_size(size, 16)
    x = torch.rand(2, 3, h, w, dtype=torch.float64)
    grid4 = resample(x, size, 16, 4)
    by_hand = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.equal(grid4, by_hand[..., : -(-size[0] // 4), : -(-size[1] // 4)])
    assert torch.equal(resample(x, size, 16, 1), upsample_to_image(x, 16, size))


@pytest.mark.parametrize("size", ODD_SIZES)
def test_mirrored_map_is_mirrored_back_in_pixel_coordinates(size):
    stride = 16
    h, w = strided_size(size, stride)
    up = resample(one_hot_cells(h, w), size, stride, 1, mirrored=True)
    winner = up[0].argmax(0).numpy()
    ys, xs = np.mgrid[0:size[0], 0:size[1]]
    mirrored_x = size[1] - 1 - xs  # where pixel x lies in the mirrored image
    assert np.array_equal(winner, (ys // stride) * w + mirrored_x // stride)
    if size[1] % stride:  # flipping the cells instead would misplace the columns
        flipped = upsample_to_image(one_hot_cells(h, w).flip(-1), stride, size)[0].argmax(0).numpy()
        assert not np.array_equal(flipped, winner)


@pytest.mark.parametrize("scale", [0.5, 1.5, 2.0])
def test_rescaled_map_lands_where_its_cells_are(scale):
    size, stride = (70, 83), 16
    scaled = rescaled_size(size, scale)
    h, w = strided_size(scaled, stride)
    up = resample(one_hot_cells(h, w), size, stride, 1, scaled_size=scaled)
    winner = up[0].argmax(0).numpy()
    ys, xs = np.mgrid[0:size[0], 0:size[1]]
    cy = (ys + 0.5) * scaled[0] / size[0] / stride  # the cell (fractional) each pixel centre falls in
    cx = (xs + 0.5) * scaled[1] / size[1] / stride
    inside = (np.abs(cy - np.round(cy)) > 1e-6) & (np.abs(cx - np.round(cx)) > 1e-6)  # not on a cell border
    expected = np.minimum(np.floor(cy), h - 1) * w + np.minimum(np.floor(cx), w - 1)
    assert np.array_equal(winner[inside], expected[inside])


def test_cell_centres_reads_the_centre_pixel():
    mask = torch.arange(70 * 83).reshape(70, 83)
    out = cell_centres(mask, 4)
    assert out.shape == (18, 21)
    assert out[0, 0] == mask[2, 2] and out[3, 5] == mask[14, 22]
    assert out[-1, -1] == mask[69, 82]  # the last (partial) cell: its centre pixel is clamped into the image
    assert torch.equal(cell_centres(mask, 1), mask)


@pytest.mark.parametrize("name", ["tiny", "resnet18"])
@pytest.mark.parametrize("size", ODD_SIZES[:2])
def test_backbones_round_up(name, size):
    net = build_backbone(name, 4).eval()
    with torch.no_grad():
        levels = net.levels(torch.zeros(1, 3, *size))
    for feat, stride in zip(levels, net.level_strides):
        assert tuple(feat.shape[-2:]) == strided_size(size, stride)
    assert levels[-1].shape[1] == net.out_channels


def test_segmentation_net_upsamples_exactly():
    from grmseg.models.wsss import SegmentationNet

    net = SegmentationNet(3, "tiny", 4, aspp_channels=8, aspp_rates=(1,), use_grm=False, dropout=0).eval()
    seen = {}
    net.classifier.register_forward_hook(lambda m, i, o: seen.setdefault("logits", o))
    with torch.no_grad():
        out = net(torch.randn(1, 3, 61, 95))
    assert out.shape == (1, 3, 61, 95)
    torch.testing.assert_close(out, upsample_to_image(seen["logits"], 4, (61, 95)))


# ------------------------------------------------------------------------------------------- CAM aggregation
def test_aggregate_cams_geometry_and_normalisation():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 8, 10, generator=g)  # stride 4 map of a 32 x 40 image
    one = aggregate_cams([ScaledCam(a, (32, 40))], (32, 40), 4, 4)
    torch.testing.assert_close(one, a / (a.amax(dim=(2, 3), keepdim=True) + 1e-5))
    # 40 is a multiple of the stride: the mirrored map is the flipped one, a + flip(flip(a)) = 2a
    mirrored = aggregate_cams([ScaledCam(a, (32, 40)), ScaledCam(a.flip(-1), (32, 40), mirrored=True)], (32, 40),
                              4, 4)
    torch.testing.assert_close(mirrored, one)
    labels = torch.tensor([[1, 0, 1], [0, 1, 1]])
    out = aggregate_cams([ScaledCam(a, (32, 40))], (32, 40), 4, 1, labels=labels)
    expected = upsample_to_image(a, 4, (32, 40))
    expected = expected / (expected.amax(dim=(2, 3), keepdim=True) + 1e-5) * labels[:, :, None, None]
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError):
        aggregate_cams([], (32, 40), 4)
    with pytest.raises(ValueError, match="stride-4 map"):
        aggregate_cams([ScaledCam(a, (40, 40))], (40, 40), 4)


def _features(stride: int):
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 16, kernel_size=stride + 1, stride=stride, padding=stride // 2)
    return lambda x: torch.relu(conv(x))


def test_multiscale_cams_irn_by_hand_on_divisible_sizes():
    features = _features(4)
    image = torch.randn(2, 3, 32, 40)
    weight = torch.randn(5, 16)
    labels = torch.tensor([[1, 0, 0, 1, 1], [0, 1, 0, 0, 0]])
    scales = (1.0, 0.5, 1.5)
    out4, out1 = multiscale_cams(features, image, weight, 4, scales=scales, labels=labels, out_strides=(4, 1))
    # IRN by hand: raw ReLU scores of the image and its mirror, resized to the scale-1.0 map, summed, normalised
    # (where every scaled image is a multiple of the stride, IRN's resize is the exact geometry)
    maps = []
    for s in scales:
        img = image if s == 1.0 else F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False)
        for flip in (False, True):
            x = img.flip(-1) if flip else img
            cam = torch.relu(torch.einsum("kc,bchw->bkhw", weight, features(x)))
            maps.append(cam.flip(-1) if flip else cam)
    total = sum(F.interpolate(m, size=(8, 10), mode="bilinear", align_corners=False) for m in maps)
    expected = total / (total.amax(dim=(2, 3), keepdim=True) + 1e-5) * labels[:, :, None, None]
    with torch.no_grad():
        torch.testing.assert_close(out4, expected.detach(), rtol=1e-4, atol=1e-5)
    assert out4.shape == (2, 5, 8, 10) and out1.shape == (2, 5, 32, 40) and out1.max() <= 1
    assert (out1[0, 1] == 0).all() and (out1[1, 0] == 0).all()


def test_multiscale_cams_odd_size_is_irn_upsample_and_crop():
    features = _features(16)
    image = torch.randn(1, 3, 70, 83)
    weight = torch.randn(3, 16)
    cam4, high = multiscale_cams(features, image, weight, 16, scales=(1.0,), flip=False, out_strides=(4, 1))
    raw = torch.relu(torch.einsum("kc,bchw->bkhw", weight, features(image))).detach()
    assert raw.shape[-2:] == (5, 6)
    up = F.interpolate(raw, size=(80, 96), mode="bilinear", align_corners=False)[..., :70, :83]  # IRN high_res
    torch.testing.assert_close(high, up / (up.amax(dim=(2, 3), keepdim=True) + 1e-5))
    grid = F.interpolate(raw, scale_factor=4, mode="bilinear", align_corners=False)[..., :18, :21]
    torch.testing.assert_close(cam4, grid / (grid.amax(dim=(2, 3), keepdim=True) + 1e-5))


# ---------------------------------------------------------------------------------------------- augmentation
def test_augment_pads_with_mean_and_ignore_and_is_deterministic():
    image = torch.randn(3, 20, 30)
    mask = torch.randint(0, 3, (20, 30))
    aug = Augment(crop=32, scale_range=(1.0, 1.0), flip=False)
    out, m = aug(image, mask, sample_rng(0, 0, 0, "seg"))
    assert out.shape == (3, 32, 32) and m.shape == (32, 32)
    inside = m != 255
    assert int(inside.sum()) == 20 * 30 and (out[:, ~inside] == 0).all()
    ys, xs = torch.nonzero(inside, as_tuple=True)
    y0, x0 = int(ys.min()), int(xs.min())
    assert torch.equal(out[:, y0:y0 + 20, x0:x0 + 30], image) and torch.equal(m[y0:y0 + 20, x0:x0 + 30], mask)
    big = Augment(crop=16, scale_range=(0.5, 1.5))
    a = big(image, mask, sample_rng(3, 2, 7, "seg"))
    b = big(image, mask, sample_rng(3, 2, 7, "seg"))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape == (3, 16, 16)
    c = big(image, mask, sample_rng(3, 3, 7, "seg"))  # another epoch, another draw
    assert not torch.equal(a[0], c[0])
    assert set(torch.unique(a[1]).tolist()) <= {0, 1, 2, 255}
    with pytest.raises(ValueError, match="scale_range"):
        Augment(crop=8, scale_range=(1.5, 0.5))
