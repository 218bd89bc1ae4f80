"""grmseg.GRM: identity at start, every parameter trained, any size/batch/dtype, DeepLabV3, torch.compile."""

import functools

import pytest
import torch
from torch import nn

import grmseg
from grmseg.models import add_grm_to_deeplabv3


def _trained_once(layer: grmseg.GRM, x: torch.Tensor) -> grmseg.GRM:
    """One SGD step on a non-trivial loss, so the zero-initialised values become non-zero."""
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    target = torch.randn_like(x)
    nn.functional.mse_loss(layer(x), target).backward()
    opt.step()
    opt.zero_grad()
    return layer


def test_starts_as_identity():
    torch.manual_seed(0)
    layer = grmseg.GRM(16, 5, node_dim=8, key_dim=4)
    x = torch.randn(2, 16, 7, 9)
    torch.testing.assert_close(layer(x), x, rtol=0, atol=0)


def test_every_parameter_gets_a_nonzero_gradient_after_one_step():
    """The paper's released code never trained its GCN weights; here every parameter learns."""
    torch.manual_seed(0)
    layer = grmseg.GRM(16, 5, node_dim=8, key_dim=4, embeddings=torch.randn(5, 6), gcn_layers=2)
    x = torch.randn(2, 16, 6, 5)
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    _trained_once(layer, x)
    nn.functional.mse_loss(layer(x), torch.randn_like(x)).backward()
    names = [n for n, _ in layer.named_parameters()]
    assert len(names) == 2 + 1 + 2 * 2 + 3  # vote w/b, node proj, 2 GCN layers (w, b), key, query, value
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    assert not torch.equal(before["value_proj"], layer.value_proj.detach())


@pytest.mark.parametrize("bsz,h,w", [(1, 1, 1), (3, 7, 9), (2, 1, 13), (1, 16, 16)])
def test_any_size_and_batch(bsz, h, w):
    torch.manual_seed(0)
    layer = _trained_once(grmseg.GRM(12, 4, node_dim=8, key_dim=4), torch.randn(2, 12, 5, 5))
    x = torch.randn(bsz, 12, h, w, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    # Each image is processed independently of the others in the batch.
    torch.testing.assert_close(layer(x[:1]), y[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_and_inputs(dtype):
    torch.manual_seed(0)
    layer = _trained_once(grmseg.GRM(12, 4, node_dim=8, key_dim=4), torch.randn(2, 12, 5, 5))
    x = torch.randn(2, 12, 5, 7)
    want = layer(x)
    got = layer.to(dtype)(x.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
    got.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in layer.parameters())


def test_autocast_bf16_with_fp32_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), grmseg.GRM(12, 4, node_dim=8, key_dim=4),
                          nn.Conv2d(12, 5, 1))
    _trained_once(model[1], torch.randn(2, 12, 5, 5))
    x = torch.randn(2, 3, 9, 7)
    want = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.1, atol=0.1)
    got.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_channels_last_input():
    torch.manual_seed(0)
    layer = _trained_once(grmseg.GRM(12, 4, node_dim=8, key_dim=4), torch.randn(2, 12, 5, 5))
    x = torch.randn(2, 12, 6, 5)
    torch.testing.assert_close(layer(x.to(memory_format=torch.channels_last)), layer(x))


def test_inside_torchvision_deeplabv3_forward_and_backward():
    pytest.importorskip("torchvision", reason="torchvision is not installed (the GPU machine has none)")
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    add_grm_to_deeplabv3(model, embeddings=torch.randn(21, 10))
    assert isinstance(model.classifier[-2], grmseg.GRM) and model.classifier[-2].in_channels == 256
    images, target = torch.randn(2, 3, 65, 57), torch.randint(0, 21, (2, 65, 57))
    out = model(images)["out"]
    assert out.shape == (2, 21, 65, 57)
    nn.functional.cross_entropy(out, target).backward()
    grm = model.classifier[-2]
    assert grm.value_proj.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="already holds a GRM"):
        add_grm_to_deeplabv3(model)


def test_torch_compile_fullgraph_forward_and_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 12, 1), grmseg.GRM(12, 4, node_dim=8, key_dim=4, gcn_layers=2))
    _trained_once(model[1], torch.randn(2, 12, 5, 5))
    x = torch.randn(2, 3, 7, 5)
    want = model(x)
    want.square().sum().backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)  # inductor, as users run it
    got = compiled(x)
    got.square().sum().backward()
    torch.testing.assert_close(got, want)
    for g, w in zip((p.grad for p in model.parameters()), want_grads):
        torch.testing.assert_close(g, w)


def _record_shape(sizes: list, t: torch.Tensor) -> torch.Tensor:
    sizes.append(tuple(t.shape))
    return t


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keep_assignment_changes_nothing_but_what_is_saved(dtype):
    """GRM(keep_assignment=True), the default, and False: bitwise the same output and gradients on the CPU (the
    kept assignment is the one the backward would recompute), and only the kept layer saves [B, K, P] tensors.
    For bf16 the kept layer's joint backward (see test_joint_backward_*) writes the gradient of x in one pass, with
    no bf16 rounding of the reprojection's part in between: that one gradient is as close as the two roundings."""
    torch.manual_seed(0)
    kept, recomputed = grmseg.GRM(16, 5, node_dim=8, key_dim=4), grmseg.GRM(16, 5, node_dim=8, key_dim=4,
                                                                         keep_assignment=False)
    _trained_once(kept, torch.randn(2, 16, 5, 5))
    recomputed.load_state_dict(kept.state_dict())
    x = torch.randn(2, 16, 9, 7, dtype=dtype, requires_grad=True)
    gy = torch.randn_like(x)
    results, saved = [], []
    for layer in (kept.to(dtype), recomputed.to(dtype)):
        sizes: list[tuple[int, ...]] = []
        pack = functools.partial(_record_shape, sizes)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = layer(x)
        results.append((y, *torch.autograd.grad(y, (x, *layer.parameters()), gy)))
        saved.append(sizes)
    for i, (a, b) in enumerate(zip(*results)):
        if i == 1 and dtype == torch.bfloat16:
            torch.testing.assert_close(a, b, rtol=2 ** -7, atol=2 ** -7 * b.abs().max().item())
        else:
            assert torch.equal(a, b)
    assert saved[0].count((2, 5, 63)) == 2 and (2, 5, 63) not in saved[1]
    with pytest.raises(TypeError, match="'keep_assignment' must be a bool"):
        grmseg.GRM(16, 5, keep_assignment=None)


def _kernel_log(monkeypatch) -> list[str]:
    """The names of the backend kernels the op layer runs from now on."""
    from grmseg.ops import _backends

    names: list[str] = []
    kernel = _backends.kernel

    def logged(name, device, backend):
        names.append(name)
        return kernel(name, device, backend)

    monkeypatch.setattr(_backends, "kernel", logged)
    return names


def _layer_and_input(dtype=torch.float64):
    torch.manual_seed(0)
    layer = _trained_once(grmseg.GRM(16, 5, node_dim=8, key_dim=4, gcn_layers=2), torch.randn(2, 16, 6, 5))
    x = torch.randn(3, 16, 9, 7, requires_grad=True)
    return layer.to(dtype), x.detach().to(dtype).requires_grad_()


@pytest.mark.skipif(not grmseg._ext.built(), reason="needs the CPU kernels (grmseg._C)")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_joint_backward_runs_on_the_cpu_kernels_and_matches_the_two_passes(monkeypatch, dtype):
    """With the CPU kernels the layer's projection and reprojection write the gradient of x in one pass (the joint
    kernels); the gradients are bitwise those of the two passes (the same sums in the same order) and match the
    reference, also when autograd runs the graph twice or for a part of the inputs first."""
    from grmseg.ops import _backends

    layer, x = _layer_and_input(dtype)
    layer.backend = "csrc"
    gy = torch.randn_like(x)
    wrt = (x, *layer.parameters())
    log = _kernel_log(monkeypatch)
    y = layer(x)
    joint = torch.autograd.grad(y, wrt, gy, retain_graph=True)
    assert {"grm_reproject_backward_kept_joint", "grm_project_backward_kept_joint"} <= set(log)
    assert all(torch.equal(a, b) for a, b in zip(joint, torch.autograd.grad(y, wrt, gy, retain_graph=True)))
    # a part first (the reprojection's backward alone runs), then everything again
    torch.autograd.grad(y, [layer.value_proj], gy, retain_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(joint, torch.autograd.grad(y, wrt, gy)))

    monkeypatch.setattr(_backends, "joint_backend", lambda *a, **k: None)
    log.clear()
    two_passes = torch.autograd.grad(layer(x), wrt, gy)
    assert "grm_project_backward_kept_joint" not in log and "grm_project_backward_kept" in log
    assert all(torch.equal(a, b) for a, b in zip(joint, two_passes))
    layer.backend = "reference"
    for a, b in zip(joint, torch.autograd.grad(layer(x), wrt, gy)):
        torch.testing.assert_close(a, b)


def test_joint_link_only_where_it_applies():
    """ops.joint_link: a link with the CPU kernels, keep_assignment and grad; None for the reference (the oracle
    composes the plain backwards), without keep_assignment, without grad, or with nothing that requires it."""
    x = torch.randn(2, 6, 10, requires_grad=True)
    w, b = torch.randn(3, 6), torch.randn(3)
    link = grmseg.ops.joint_link
    if grmseg._ext.built():
        assert link(x, w, b, backend="csrc") is not None
    assert link(x, w, b, backend="reference") is None
    assert link(x, w, b, backend="csrc", keep_assignment=False) is None
    assert link(x.detach(), w, b, backend="csrc") is None
    with torch.no_grad():
        assert link(x, w, b, backend="csrc") is None


@pytest.mark.skipif(not grmseg._ext.built(), reason="needs the CPU kernels (grmseg._C)")
def test_joint_link_argument_errors():
    x = torch.randn(2, 6, 10, requires_grad=True)
    w, b = torch.randn(3, 6), torch.randn(3)
    q = v = torch.randn(2, 3, 6)
    with pytest.raises(TypeError, match="'link' must come from grmseg.ops.joint_link"):
        grmseg.ops.grm_project_tee(x, w, b, link=object())
    with pytest.raises(TypeError, match="'link' must come from grmseg.ops.joint_link"):
        grmseg.ops.grm_reproject(x, q, v, link="link")
    link = grmseg.ops.joint_link(x, w, b, backend="csrc")
    with pytest.raises(ValueError, match="'link' needs the assignment kept"):
        grmseg.ops.grm_project_tee(x, w, b, backend="csrc", keep_assignment=False, link=link)
    with pytest.raises(ValueError, match="'link' needs keep_assignment=True"):
        grmseg.ops.grm_reproject(x, q, v, backend="csrc", keep_assignment=False, link=link)
    # a link reprojects only the x_tee of its own projection, once: else x's gradient would silently miss a part
    with pytest.raises(ValueError, match="'link' belongs to another x"):
        grmseg.ops.grm_reproject(x, q, v, backend="csrc", link=link)  # before any projection
    _, _, x_tee = grmseg.ops.grm_project_tee(x, w, b, backend="csrc", link=link)
    with pytest.raises(ValueError, match="already serves another projection"):
        grmseg.ops.grm_project_tee(x, w, b, backend="csrc", link=link)
    with pytest.raises(ValueError, match="'link' belongs to another x"):
        grmseg.ops.grm_reproject(x, q, v, backend="csrc", link=link)  # x itself, not its x_tee
    y = grmseg.ops.grm_reproject(x_tee, q, v, backend="csrc", link=link)
    with pytest.raises(ValueError, match="already serves another reprojection"):
        grmseg.ops.grm_reproject(x_tee, q, v, backend="csrc", link=link)
    gx = torch.autograd.grad(y, x, torch.ones_like(y))[0]
    torch.testing.assert_close(gx, torch.autograd.grad(
        grmseg.ops.grm_reproject(grmseg.ops.grm_project_tee(x, w, b, backend="reference")[2], q, v,
                                 backend="reference"), x, torch.ones_like(y))[0])


def test_torch_compile_traces_the_keeping_ops_where_the_layer_keeps():
    """keeps_assignment is decided when the graph is traced: the graph holds grm_reproject_keep on the CPU by
    default and grm_reproject with keep_assignment=False (fullgraph: no break around the decision)."""
    x = torch.randn(2, 12, 5, 5, requires_grad=True)
    for keep, op in ((True, "grmseg.grm_reproject_keep.default"), (False, "grmseg.grm_reproject.default")):
        seen: list[str] = []

        def record(gm, example_inputs, seen=seen):
            seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
            return gm

        layer = grmseg.GRM(12, 4, node_dim=8, key_dim=4, keep_assignment=keep)
        torch.compile(layer, fullgraph=True, backend=record)(x).sum().backward()
        assert op in seen, (keep, [t for t in seen if "grmseg" in t])


def test_constructor_and_input_errors():
    with pytest.raises(ValueError, match="'num_nodes' must be an int >= 1, got 0"):
        grmseg.GRM(8, 0)
    with pytest.raises(ValueError, match="'activation'"):
        grmseg.GRM(8, 3, activation="tanh")
    with pytest.raises(ValueError, match=r"'embeddings' must have shape \[K=3, E\], got \[4, 5\]"):
        grmseg.GRM(8, 3, embeddings=torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"'adjacency' must have shape \[3, 3\], got \[3, 4\]"):
        grmseg.GRM(8, 3, adjacency=torch.randn(3, 4))
    with pytest.raises(TypeError, match="'embeddings' must be a Tensor"):
        grmseg.GRM(8, 3, embeddings=[1, 2])
    with pytest.raises(ValueError, match="backend must be"):
        grmseg.GRM(8, 3, backend="fast")
    layer = grmseg.GRM(8, 3)
    with pytest.raises(ValueError, match=r"'x' must have shape \[B, 8, H, W\], got \[2, 7, 4, 4\]"):
        layer(torch.randn(2, 7, 4, 4))
    with pytest.raises(ValueError, match=r"got \[2, 8, 4\]"):
        layer(torch.randn(2, 8, 4))
    with pytest.raises(ValueError, match="empty"):
        layer(torch.randn(0, 8, 4, 4))


def test_state_dict_round_trip_and_repr():
    layer = grmseg.GRM(8, 3, embeddings=torch.randn(3, 4))
    other = grmseg.GRM(8, 3, embeddings=torch.zeros(3, 4))
    other.load_state_dict(layer.state_dict())
    x = torch.randn(1, 8, 3, 3)
    torch.testing.assert_close(other(x), layer(x))
    assert "num_nodes=3" in repr(layer) and "embeddings=4-d" in repr(layer)


def test_dataset_name_loads_shipped_embeddings_and_graph():
    from grmseg import knowledge

    layer = grmseg.GRM(16, 21, node_dim=8, key_dim=4, embeddings="voc")
    torch.testing.assert_close(layer.embeddings, knowledge.class_embeddings("voc"))
    torch.testing.assert_close(layer.adjacency, knowledge.default_adjacency("voc"))
    assert layer(torch.randn(1, 16, 3, 3)).shape == (1, 16, 3, 3)
    with pytest.raises(ValueError, match="has 81 classes but num_nodes=21"):
        grmseg.GRM(16, 21, embeddings="coco")
