"""Backbones, Euclidean heads and build_model: shapes for every ablation row, closed-form outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lpc_geom.ablation import ROWS, get_row
from lpc_geom.models import (
    HEADS,
    MLP,
    Classifier,
    CNN1d,
    CosineClassifier,
    EuclideanHead,
    HeadOutput,
    backbone_options,
    build_backbone,
    build_head,
    build_model,
    register_head,
    resnet18,
    resnet50,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def resnets():
    torch.manual_seed(0)
    return {"resnet18": resnet18(), "resnet50": resnet50()}


# ----------------------------------------------------------------------------------------- backbones


def test_mlp_flattens_and_reports_out_dim():
    torch.manual_seed(0)
    mlp = MLP((8, 8), hidden=(32, 16))
    x = torch.randn(5, 8, 8)
    h = mlp(x)
    assert mlp.out_dim == 16 and h.shape == (5, 16)
    # Same network applied to the flattened input by hand.
    lin1, lin2 = mlp.net[1], mlp.net[3]
    expected = F.silu(lin2(F.silu(lin1(x.reshape(5, 64)))))
    torch.testing.assert_close(h, expected)


def test_mlp_batch_norm_and_identity():
    bn = MLP((10,), hidden=(7,), batch_norm=True)
    assert any(isinstance(m, nn.BatchNorm1d) for m in bn.modules())
    assert bn.net[1].bias is None  # BN makes a linear bias redundant
    ident = MLP((2, 3), hidden=())
    x = torch.randn(4, 2, 3)
    assert ident.out_dim == 6
    torch.testing.assert_close(ident(x), x.reshape(4, 6))


def test_cnn1d_accepts_both_input_layouts():
    torch.manual_seed(0)
    cnn = CNN1d()
    assert cnn.out_dim == 32 * 5  # lengths 40 -> 20 -> 10 -> 5
    x = torch.randn(3, 40)
    torch.testing.assert_close(cnn(x), cnn(x.unsqueeze(1)))
    assert cnn(x).shape == (3, 160)
    with pytest.raises(ValueError, match=r"\(N, 1, 40\)"):
        cnn(torch.randn(3, 41))


def test_cnn1d_out_dim_matches_forward_for_other_lengths():
    cnn = CNN1d(input_length=57, channels=(4, 6), kernel_sizes=(5, 3), in_channels=2, batch_norm=True)
    assert cnn(torch.randn(2, 2, 57)).shape == (2, cnn.out_dim)


def test_resnet_parameter_counts_match_standard_cifar_resnets(resnets):
    # torchvision's ImageNet ResNet-18 / -50 have 11,689,512 / 25,557,032 parameters. Removing the
    # 1000-way fc (513,000 / 2,049,000) and replacing the 7x7 stem by a 3x3 one (-7,680) gives the
    # CIFAR backbones (equal to the widely used CIFAR ResNets without their 10-way fc).
    assert n_params(resnets["resnet18"]) == 11_689_512 - 513_000 - 7_680 == 11_168_832
    assert n_params(resnets["resnet50"]) == 25_557_032 - 2_049_000 - 7_680 == 23_500_352
    assert resnets["resnet18"].out_dim == 512 and resnets["resnet50"].out_dim == 2048


def test_resnet_width_scales_every_stage():
    narrow = build_backbone("resnet18", (1, 8, 8), width=16)
    assert narrow.out_dim == 128 and narrow(torch.randn(2, 1, 8, 8)).shape == (2, 128)
    convs = [m for m in narrow.modules() if isinstance(m, nn.Conv2d)]
    assert {m.out_channels for m in convs} == {16, 32, 64, 128}
    # every 3x3 conv has (width / 64)^2 of the standard weights, except the stem's input side
    standard = sum(m.weight.numel() for m in resnet18(in_channels=1).modules() if isinstance(m, nn.Conv2d))
    assert sum(m.weight.numel() for m in convs) == pytest.approx(standard / 16, rel=1e-3)
    assert resnet50(width=8).out_dim == 256
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="width"):
            resnet18(width=bad)


def test_one_dimensional_resnets_take_sequences():
    for shape in ((40,), (1, 40)):
        net = build_backbone("resnet18", shape, width=8)
        assert net.dims == 1 and net.out_dim == 64
        assert net(torch.randn(3, *shape)).shape == (3, 64)
    modules = list(net.modules())
    assert any(isinstance(m, nn.Conv1d) for m in modules) and any(isinstance(m, nn.BatchNorm1d) for m in modules)
    assert not any(isinstance(m, nn.Conv2d | nn.BatchNorm2d) for m in modules)
    two_channel = build_backbone("resnet50", (2, 16), width=4)
    assert two_channel(torch.randn(2, 2, 16)).shape == (2, 128)
    with pytest.raises(ValueError, match=r"\(N, 2, L\)"):
        two_channel(torch.randn(2, 16))
    with pytest.raises(ValueError, match="dims"):
        resnet18(dims=3)


def test_resnets_use_silu_and_batch_norm(resnets):
    for net in resnets.values():
        kinds = {type(m) for m in net.modules()}
        assert nn.SiLU in kinds and any(issubclass(kind, nn.BatchNorm2d) for kind in kinds)
        assert nn.ReLU not in kinds and nn.MaxPool2d not in kinds
        assert net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (1, 1)


def test_resnet18_forward_cifar_shape(resnets):
    net = resnets["resnet18"].eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    net.train()


def test_zero_init_residual_makes_blocks_start_as_identity_maps():
    torch.manual_seed(0)
    net = resnet18(in_channels=1, zero_init_residual=True).eval()
    block = net.layer1[0]
    x = F.silu(torch.randn(2, 64, 8, 8))  # identity shortcut: y = SiLU(0 + x)
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.silu(x))


def test_build_backbone_names_and_errors():
    assert build_backbone("MLP", (4,), hidden=(3,)).out_dim == 3
    assert build_backbone("cnn1d", (1, 40)).out_dim == 160
    assert build_backbone("cnn1d", (40,), channels=(8, 8)).out_dim == 8 * 10
    assert build_backbone("resnet18", (1, 16, 16)).stem[0].in_channels == 1
    with pytest.raises(ValueError, match="accepted backbones: mlp, cnn1d, resnet18, resnet50"):
        build_backbone("vgg", (3, 32, 32))
    with pytest.raises(ValueError, match="accepted options: hidden, batch_norm"):
        build_backbone("mlp", (4,), width=3)
    # sizes derived from input_shape are not options
    with pytest.raises(ValueError, match="unknown option"):
        build_backbone("cnn1d", (40,), input_length=40)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_backbone("resnet18", (3, 4, 8, 8))
    with pytest.raises(ValueError, match="length 8"):
        build_backbone("resnet18", (1, 6))
    with pytest.raises(ValueError, match=r"\(L,\) or \(C, L\)"):
        build_backbone("cnn1d", (1, 1, 40))
    assert backbone_options("resnet50") == ("zero_init_residual", "width")  # dims comes from input_shape


# ---------------------------------------------------------------------------------------------- heads


@pytest.mark.parametrize("penultimate", ["none", "linear", "nonlinear"])
@pytest.mark.parametrize("bias", [False, True])
def test_euclidean_head_closed_form(penultimate, bias):
    torch.manual_seed(0)
    head = EuclideanHead(12, 5, penultimate=penultimate,
                         latent_dim=None if penultimate == "none" else 4, bias=bias)
    h = torch.randn(7, 12)
    out = head(h)
    assert isinstance(out, HeadOutput)
    if penultimate == "none":
        z = h
    else:
        lin = head.penultimate if penultimate == "linear" else head.penultimate[0]
        z = h @ lin.weight.t() + lin.bias
        if penultimate == "nonlinear":
            z = z * torch.sigmoid(z)
    w = head.classifier.weight
    logits = z @ w.t() + (head.classifier.bias if bias else 0.0)
    assert (head.classifier.bias is not None) == bias
    torch.testing.assert_close(out.latents, z)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.energy, (z ** 2).sum(dim=1))
    assert out.latents.shape == (7, head.latent_dim)


def test_cosine_head_values_and_range():
    torch.manual_seed(0)
    head = EuclideanHead(6, 4, classifier="cosine")
    h = 100 * torch.randn(50, 6)
    out = head(h)
    w = head.classifier.weight
    expected = (h @ w.t()) / (h.norm(dim=1, keepdim=True) * w.norm(dim=1))
    torch.testing.assert_close(out.logits, expected)
    assert out.logits.abs().max() <= 1.0
    # Scaling z or w does not change cosines.
    torch.testing.assert_close(head(3.7 * h).logits, out.logits)


def test_cosine_classifier_is_finite_at_zero():
    clf = CosineClassifier(3, 2)
    z = torch.zeros(4, 3, requires_grad=True)
    cos = clf(z)
    assert torch.equal(cos, torch.zeros(4, 2))
    cos.sum().backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(clf.weight.grad).all()


def test_cosine_classifier_attains_plus_minus_one():
    clf = CosineClassifier(2, 2)
    with torch.no_grad():
        clf.weight.copy_(torch.tensor([[1.0, 0.0], [-2.0, 0.0]]))
    cos = clf(torch.tensor([[5.0, 0.0]]))
    torch.testing.assert_close(cos, torch.tensor([[1.0, -1.0]]))


def test_head_argument_errors():
    with pytest.raises(ValueError, match="accepted: none, linear, nonlinear"):
        EuclideanHead(4, 2, penultimate="relu")
    with pytest.raises(ValueError, match="positive latent_dim"):
        EuclideanHead(4, 2, penultimate="linear")
    with pytest.raises(ValueError, match="no penultimate"):
        EuclideanHead(4, 2, latent_dim=3)
    with pytest.raises(ValueError, match="no bias"):
        EuclideanHead(4, 2, classifier="cosine", bias=True)


def test_build_head_widths_follow_the_rows():
    assert build_head("LPC", 20, 10).latent_dim == 64
    assert build_head("LPC-Narrow", 20, 10).latent_dim == 16
    assert build_head("LPC-Wide", 20, 100).latent_dim == 256
    assert build_head("LPC", 20, 100, latent_dim=7).latent_dim == 7
    assert build_head("LPC-NoPen", 20, 10).latent_dim == 20
    assert isinstance(build_head("NonlinPen", 20, 10).penultimate[1], nn.SiLU)
    assert isinstance(build_head("ArcFace", 20, 10).classifier, CosineClassifier)
    assert build_head("LPC", 20, 10).classifier.bias is None  # paper: no classifier bias
    with pytest.raises(ValueError, match="no penultimate layer"):
        build_head("NoPen", 20, 10, latent_dim=8)


# ------------------------------------------------------------------------------------ every row x backbone

BACKBONE_INPUTS = {
    "mlp": ((8, 8), {"hidden": (16,)}),
    "cnn1d": ((40,), {"channels": (4, 4, 4)}),
}


def _check_output(out, row, num_classes, in_dim, n):
    d = row.latent_dim(num_classes) or in_dim
    assert out.logits.shape == (n, num_classes)
    assert out.latents.shape == (n, d)
    assert out.energy.shape == (n,)
    torch.testing.assert_close(out.energy, out.latents.pow(2).sum(dim=1))
    if row.classifier != "linear":
        assert out.logits.abs().max() <= 1.0


@pytest.mark.parametrize("row_name", list(ROWS))
@pytest.mark.parametrize("backbone", list(BACKBONE_INPUTS))
def test_build_model_small_backbones_every_row(backbone, row_name):
    torch.manual_seed(0)
    shape, options = BACKBONE_INPUTS[backbone]
    row = get_row(row_name)
    model = build_model(backbone, row, shape, 10, **options)
    out = model(torch.randn(3, *shape))
    _check_output(out, row, 10, model.backbone.out_dim, 3)
    assert model.classifier_parameters()[0] is model.head.classifier.weight
    out.logits.sum().add(out.energy.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("resnet", ["resnet18", "resnet50"])
def test_resnet_heads_every_row(resnets, resnet):
    torch.manual_seed(0)
    backbone = resnets[resnet]
    with torch.no_grad():
        h = backbone(torch.randn(2, 3, 8, 8))
    assert h.shape == (2, backbone.out_dim)
    for row in ROWS.values():
        model = Classifier(backbone, build_head(row, backbone.out_dim, 100))
        _check_output(model.head(h), row, 100, backbone.out_dim, 2)


# --------------------------------------------------------------------------------- head registry / plug-in


class _ScaledHead(nn.Module):
    """A non-Euclidean-style stand-in: energy is not ||z||^2, to check it is passed through."""

    def __init__(self, in_dim, num_classes):
        super().__init__()
        self.classifier = nn.Linear(in_dim, num_classes, bias=False)

    def forward(self, h):
        return HeadOutput(self.classifier(h), h, 2.0 * h.abs().sum(dim=1))


def test_build_model_accepts_module_factory_and_registered_geometry(monkeypatch):
    calls = []

    def factory(row, in_dim, num_classes, *, latent_dim=None, bias=False):
        calls.append((row.name, in_dim, num_classes, latent_dim, bias))
        return _ScaledHead(in_dim, num_classes)

    m1 = build_model("mlp", "LPC", (5,), 3, head=factory, hidden=(4,), latent_dim=2)
    assert calls == [("LPC", 4, 3, 2, False)]
    x = torch.randn(2, 5)
    torch.testing.assert_close(m1(x).energy, 2.0 * m1.backbone(x).abs().sum(dim=1))

    m2 = build_model("mlp", "LPC", (5,), 3, head=_ScaledHead(4, 3), hidden=(4,))
    assert isinstance(m2.head, _ScaledHead)
    with pytest.raises(ValueError, match="used as it is"):
        build_model("mlp", "LPC", (5,), 3, head=_ScaledHead(4, 3), hidden=(4,), latent_dim=2)

    monkeypatch.setitem(HEADS, "toy", factory)
    m3 = build_model("mlp", "NoPen", (5,), 3, head="Toy", hidden=(4,))
    assert isinstance(m3.head, _ScaledHead)

    with pytest.raises(ValueError, match="registered: euclidean"):
        build_model("mlp", "LPC", (5,), 3, head="hyperbolic-typo")
    with pytest.raises(ValueError, match="classifier"):
        build_model("mlp", "LPC", (5,), 3, head=nn.Identity())


def test_register_head_refuses_silent_overwrite(monkeypatch):
    monkeypatch.setattr("lpc_geom.models.build.HEADS", dict(HEADS))
    from lpc_geom.models import build as build_module

    def factory(row, in_dim, num_classes, *, latent_dim=None, bias=False):
        return _ScaledHead(in_dim, num_classes)

    register_head("toy2", factory)
    assert build_module.HEADS["toy2"] is factory
    with pytest.raises(ValueError, match="already registered"):
        register_head("euclidean", factory)
    register_head("euclidean", factory, replace=True)
    assert build_module.HEADS["euclidean"] is factory
    assert HEADS["euclidean"] is build_head  # the module-level registry was restored by monkeypatch


def test_build_model_rejects_bad_rows_and_class_counts():
    with pytest.raises(ValueError, match="accepted rows"):
        build_model("mlp", "LPC-Huge", (4,), 3)
    with pytest.raises(ValueError, match="at least 2"):
        build_model("mlp", "LPC", (4,), 1)


# ----------------------------------------------------------------------------------------- batch norms


def _norm_pair(cls, channels: int, affine: bool, dtype: torch.dtype, seed: int):
    """lpc_geom's batch norm and torch's with the same random running statistics and affine parameters."""
    from lpc_geom.models import norm

    g = torch.Generator().manual_seed(seed)
    ours = getattr(norm, cls.__name__)(channels, affine=affine).to(dtype)
    with torch.no_grad():
        ours.running_mean.copy_(torch.randn(channels, generator=g))
        ours.running_var.copy_(torch.rand(channels, generator=g) * 5 + 1e-2)
        if affine:
            ours.weight.copy_(torch.randn(channels, generator=g))
            ours.bias.copy_(torch.randn(channels, generator=g))
    theirs = cls(channels, affine=affine).to(dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours.eval(), theirs.eval(), g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("cls", "shape"), [(nn.BatchNorm1d, (1000, 8, 40)), (nn.BatchNorm1d, (7, 64, 5)),
                                            (nn.BatchNorm1d, (128, 64)), (nn.BatchNorm1d, (1, 32, 3)),
                                            (nn.BatchNorm2d, (6, 16, 7, 9))])
def test_eval_batch_norm_is_torchs_output_and_input_gradient_exactly(cls, shape, affine, dtype):
    ours, theirs, g = _norm_pair(cls, shape[1], affine, dtype, seed=sum(shape))
    x = (3 * torch.randn(*shape, generator=g)).to(dtype).requires_grad_(True)
    grad_out = torch.randn(*shape, generator=g).to(dtype)
    y_ours, y_theirs = ours(x), theirs(x)
    assert torch.equal(y_ours, y_theirs)
    (gx_ours,) = torch.autograd.grad(y_ours, x, grad_out)
    (gx_theirs,) = torch.autograd.grad(y_theirs, x, grad_out)
    assert torch.equal(gx_ours, gx_theirs)
    with torch.no_grad():
        assert torch.equal(ours(x), y_theirs)
    if affine:  # the affine map's parameter gradients: torch's up to the rounding of the sums
        mine = torch.autograd.grad(ours(x), [ours.weight, ours.bias], grad_out)
        reference = torch.autograd.grad(theirs(x), [theirs.weight, theirs.bias], grad_out)
        for a, b in zip(mine, reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-3)


def test_batch_norm_training_mode_and_state_are_torchs():
    from lpc_geom.models import norm

    torch.manual_seed(0)
    ours, theirs = norm.BatchNorm1d(4), nn.BatchNorm1d(4)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(16, 4, 10, requires_grad=True)
    y_ours, y_theirs = ours(x), theirs(x)  # training mode: batch statistics, running statistics updated
    assert torch.equal(y_ours, y_theirs)
    assert torch.equal(ours.running_mean, theirs.running_mean) and torch.equal(ours.running_var, theirs.running_var)
    assert torch.equal(torch.autograd.grad(y_ours.sum(), x)[0], torch.autograd.grad(y_theirs.sum(), x)[0])
    untracked = norm.BatchNorm1d(4, track_running_stats=False).eval()  # no running statistics: batch ones
    torch.testing.assert_close(untracked(x).detach(), nn.functional.batch_norm(x, None, None, training=True).detach()
                               * untracked.weight.detach().view(1, -1, 1) + untracked.bias.detach().view(1, -1, 1))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        ours.eval()(torch.randn(2, 4, 3, 3))


def test_eval_batch_norm_under_torch_func_is_the_affine_map():
    ours, _, _ = _norm_pair(nn.BatchNorm1d, 3, True, torch.float64, seed=1)
    x = torch.randn(5, 3, dtype=torch.float64)
    jacobian = torch.func.vmap(torch.func.jacrev(lambda row: ours(row.unsqueeze(0)).squeeze(0)))(x)
    alpha = ours.weight.detach() / torch.sqrt(ours.running_var + ours.eps)
    torch.testing.assert_close(jacobian, torch.diag(alpha).expand(5, 3, 3), rtol=1e-12, atol=0)


def test_resnet_eval_forward_and_input_gradient_equal_torchs_batch_norm():
    torch.manual_seed(0)
    net = resnet18(in_channels=1, width=4, dims=1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    reference = resnet18(in_channels=1, width=4, dims=1)
    for module in list(reference.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm1d):
                setattr(module, child_name, nn.BatchNorm1d(child.num_features))
    assert not any(type(m).__module__.startswith("lpc_geom.models.norm") for m in reference.modules())
    reference.load_state_dict(net.state_dict())
    net.eval(), reference.eval()
    x = torch.randn(9, 1, 24, requires_grad=True)
    y, y_ref = net(x), reference(x)
    assert torch.equal(y, y_ref)
    assert torch.equal(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(y_ref.sum(), x)[0])
