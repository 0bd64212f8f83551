"""Tests of lpc_geom.analysis.robustness: batched DeepFool, Lipschitz bounds, certified radii."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from bounds import assert_upper_bound_holds, seeded_generator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from references import reference_deepfool
from torch import nn

from lpc_geom.analysis.robustness import (
    LipschitzRuleError,
    UnboundedLipschitzError,
    certified_accuracy,
    certified_radius,
    chain_rule,
    deepfool,
    fmn,
    lipschitz_lower_bound,
    lipschitz_upper_bound,
    logit_margins,
    read_robustness_json,
    register_lipschitz_rule,
    residual_rule,
    robustness_report,
    write_robustness_json,
)
from lpc_geom.analysis.robustness.spectral import conv_matrix_norm, conv_operator_norm
from lpc_geom.models import build_model
from lpc_geom.models.backbones import BasicBlock, Bottleneck

DIM, CLASSES = 40, 10


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return centres[y] + torch.randn(n, DIM, generator=g), y


@pytest.fixture(scope="module")
def trained_mlp():
    """A small lpc_geom MLP classifier (HeadOutput), trained for about a second on Gaussian blobs."""
    torch.manual_seed(0)
    model = build_model("mlp", "LPC", (DIM,), CLASSES, hidden=(64, 64), latent_dim=16)
    x, y = _blobs(800, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).logits, y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    x_test, y_test = _blobs(200, seed=2)
    with torch.no_grad():
        assert (model(x_test).logits.argmax(1) == y_test).float().mean() > 0.8
    return model, x_test, y_test


# ------------------------------------------------------------------------------------------ DeepFool


def test_deepfool_matches_per_sample_reference(trained_mlp):
    model, x, _ = trained_mlp
    model.eval()
    result = deepfool(model, x, batch_size=64)
    assert result.success.all()
    for i in range(x.shape[0]):
        r, iters, label, adv = reference_deepfool(model, x[i])
        ref_norm = float(r.norm())
        assert abs(float(result.norms[i]) - ref_norm) <= 1e-5 * ref_norm, i
        assert float((result.perturbations[i] - r).norm()) <= 1e-5 * ref_norm, i
        assert int(result.iterations[i]) == iters
        assert int(result.labels[i]) == label and int(result.adversarial_labels[i]) == adv
    rel = result.norms / x.norm(dim=1)
    torch.testing.assert_close(result.relative_norms, rel)


def test_every_perturbation_changes_the_prediction(trained_mlp):
    model, x, _ = trained_mlp
    result = deepfool(model, x)
    with torch.no_grad():
        clean = model(x).logits.argmax(1)
        via_sum = model(x + result.perturbations).logits.argmax(1)
        via_adv = model(result.adversarial).logits.argmax(1)
    assert torch.equal(result.labels, clean)
    assert result.success.all()
    assert (via_adv != clean).all() and (via_sum != clean).all()
    assert torch.equal(via_adv, result.adversarial_labels)
    assert (result.iterations >= 1).all() and (result.iterations <= 50).all()


def test_deepfool_leaves_grads_and_modes_alone(trained_mlp):
    model, x, _ = trained_mlp
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.grad = None if i % 2 else torch.randn_like(p)
    saved = [None if p.grad is None else p.grad.clone() for p in params]
    model.train()
    model.head.eval()  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    deepfool(model, x[:20])
    lipschitz_upper_bound(model, (DIM,))
    lipschitz_lower_bound(model, x[:20])
    certified_radius(model, x[:20], 1.0)
    robustness_report(model, x[:20], max_iter=5)
    assert [m.training for m in model.modules()] == flags
    for p, g in zip(params, saved, strict=True):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    model.zero_grad(set_to_none=True)
    model.eval()


def test_deepfool_batch_size_and_plain_tensor_models(trained_mlp):
    model, x, _ = trained_mlp
    plain = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, 5))
    a = deepfool(plain, x[:30], batch_size=7, candidates=3)
    b = deepfool(plain, x[:30], batch_size=30, candidates=3)
    torch.testing.assert_close(a.norms, b.norms, rtol=1e-5, atol=1e-7)
    assert torch.equal(a.iterations, b.iterations)
    c = deepfool(model, x[:10], candidates=100)  # more candidates than classes: capped
    assert c.success.all()


def test_deepfool_bounds_are_respected():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(DIM, 32), nn.Tanh(), nn.Linear(32, CLASSES))
    x = torch.rand(60, DIM)
    result = deepfool(model, x, bounds=(0.0, 1.0))
    adv = result.adversarial
    assert (adv >= 0).all() and (adv <= 1).all()
    torch.testing.assert_close(result.norms, (adv - x).norm(dim=1), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        pred = model(adv).argmax(1)
    assert torch.equal(pred != result.labels, result.success)
    # Per-feature bounds broadcast over the input.
    lo, hi = torch.zeros(DIM), torch.ones(DIM).clone()
    hi[: DIM // 2] = 0.5
    x_half = x.clone()
    x_half[:, : DIM // 2] *= 0.5
    adv2 = deepfool(model, x_half, bounds=(lo, hi)).adversarial
    assert (adv2 >= lo).all() and (adv2 <= hi).all()
    with pytest.raises(ValueError, match="outside bounds"):
        deepfool(model, x + 2.0, bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="lo must not exceed"):
        deepfool(model, x, bounds=(1.0, 0.0))


def test_deepfool_edge_cases():
    frozen = nn.Linear(4, 3)
    nn.init.zeros_(frozen.weight)
    with torch.no_grad():
        frozen.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    stuck = deepfool(frozen, torch.randn(5, 4))  # all gradients vanish: nothing can move
    assert not stuck.success.any() and (stuck.norms == 0).all() and (stuck.iterations == 1).all()
    empty = deepfool(frozen, torch.zeros(0, 4))
    assert len(empty) == 0 and empty.perturbations.shape == (0, 4)
    with torch.inference_mode():
        x = torch.randn(3, DIM)
    assert len(deepfool(nn.Linear(DIM, 3), x)) == 3
    for kwargs in ({"candidates": 1}, {"max_iter": 0}, {"batch_size": 0}, {"overshoot": -0.1}):
        with pytest.raises(ValueError):
            deepfool(frozen, torch.randn(2, 4), **kwargs)
    with pytest.raises(TypeError, match="logits"):
        deepfool(nn.Flatten(0), torch.randn(2, 4))


class _FlatThenSteep(nn.Module):
    """Two classes, logit difference g(z) = -1 + 0.01 z + 10 relu(z - 1) of z = u.x (u a unit vector).

    From x = 0 DeepFool's linear step (slope 0.01) jumps to z = 1.02 (1/0.01 + 1e-4); the boundary is at
    z* = 11 / 10.01, the closed form the refinement must find.
    """

    def __init__(self, dim: int):
        super().__init__()
        u = torch.zeros(dim)
        u[0] = 0.6
        u[1] = 0.8
        self.register_buffer("u", u)

    def forward(self, x):
        z = x @ self.u
        g = -1.0 + 0.01 * z + 10.0 * torch.relu(z - 1.0)
        return torch.stack([torch.zeros_like(g), g], dim=1)


def test_refinement_finds_the_boundary_deepfool_overshoots():
    model = _FlatThenSteep(5)
    x = torch.zeros(3, 5, dtype=torch.float64)
    x[:, 2:] = torch.randn(3, 3, dtype=torch.float64)  # orthogonal to u: the distance stays z*
    result = deepfool(model.double(), x, refine_steps=30)
    z_star = 11.0 / 10.01
    jump = 1.02 * (100.0 + 1e-4)
    torch.testing.assert_close(result.norms, torch.full((3,), jump, dtype=torch.float64))
    torch.testing.assert_close(result.refined_norms, torch.full((3,), z_star, dtype=torch.float64),
                               atol=jump * 2.0**-29, rtol=0)
    torch.testing.assert_close(result.refine_scales, result.refined_norms / result.norms)
    torch.testing.assert_close(result.refined_relative_norms, result.refined_norms / x.norm(dim=1))
    summary = result.summary()
    assert summary["deepfool_median_refine_scale"] == pytest.approx(z_star / jump, rel=1e-6)
    assert summary["deepfool_refined_mean_relative_norm"] < 0.02 * summary["deepfool_mean_relative_norm"]


def test_refinement_is_exact_on_a_linear_classifier_and_keeps_unfooled_samples():
    torch.manual_seed(5)
    linear = nn.Linear(DIM, 2).double()
    x = torch.randn(20, DIM, dtype=torch.float64)
    result = deepfool(linear, x, refine_steps=40)
    w = linear.weight[1] - linear.weight[0]
    b = linear.bias[1] - linear.bias[0]
    exact = ((x @ w + b).abs() / w.norm()).detach()
    assert result.success.all()
    torch.testing.assert_close(result.refined_norms, exact, atol=1e-9, rtol=1e-9)
    assert (result.refine_scales < 1).all() and (result.refine_scales > 0.97).all()  # 1 / (1 + overshoot)
    frozen = nn.Linear(4, 3)
    nn.init.zeros_(frozen.weight)
    stuck = deepfool(frozen, torch.randn(5, 4), refine_steps=10)
    assert (stuck.refine_scales == 1).all() and (stuck.refined_norms == 0).all()
    empty = deepfool(frozen, torch.zeros(0, 4), refine_steps=10)
    assert empty.refine_scales.shape == (0,)
    assert deepfool(frozen, torch.randn(2, 4)).refine_scales is None
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="refine_steps"):
            deepfool(frozen, torch.randn(2, 4), refine_steps=bad)


def test_refined_points_are_misclassified_and_inside_the_box(trained_mlp):
    model, x, _ = trained_mlp
    result = deepfool(model, x, refine_steps=20)
    assert (result.refined_norms <= result.norms + 1e-6).all()
    refined = x + result.refine_scales[:, None] * (result.adversarial - x)
    with torch.no_grad():
        pred = model(refined).logits.argmax(1)
    assert torch.equal(pred != result.labels, result.success)
    box = deepfool(model, x.clamp(-3, 3), bounds=(-3.0, 3.0), refine_steps=20)
    inside = x.clamp(-3, 3) + box.refine_scales[:, None] * (box.adversarial - x.clamp(-3, 3))
    assert (inside >= -3).all() and (inside <= 3).all()


# ----------------------------------------------------------------------------------- Lipschitz bounds


def test_upper_bound_is_exact_on_a_linear_layer():
    torch.manual_seed(0)
    layer = nn.Linear(13, 7)
    sigma = float(torch.linalg.svdvals(layer.weight.detach().double())[0])
    upper = lipschitz_upper_bound(layer, (13,))
    assert upper.value == pytest.approx(sigma, rel=1e-12)
    lower = lipschitz_lower_bound(layer, torch.randn(5, 13), candidates=None)
    assert lower.value == pytest.approx(sigma, rel=1e-5)
    assert lower.value <= upper.value * (1 + 1e-6)


class _Residual(nn.Module):
    """act(branch(x) + shortcut(x)), for the property test."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module, act: nn.Module):
        super().__init__()
        self.branch, self.shortcut, self.act = branch, shortcut, act

    def forward(self, x):
        return self.act(self.branch(x) + self.shortcut(x))


register_lipschitz_rule(_Residual, residual_rule(("branch",), "shortcut", ("act",)), replace=True)

_ACTS = (nn.ReLU, nn.SiLU, nn.Tanh, nn.GELU, lambda: nn.LeakyReLU(0.3), nn.ELU, nn.Identity)


def _random_bn(bn: nn.modules.batchnorm._BatchNorm, g: torch.Generator) -> nn.Module:
    with torch.no_grad():
        bn.weight.copy_(2 * torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.05)
    return bn


@st.composite
def small_networks(draw):
    """Random small dense or 1-D convolutional networks with BN, activations and residual blocks."""
    seed, g = seeded_generator(draw)
    conv = draw(st.booleans())
    layers: list[nn.Module] = []
    act = lambda: _ACTS[draw(st.integers(0, len(_ACTS) - 1))]()  # noqa: E731
    if conv:
        c, length = draw(st.integers(1, 3)), draw(st.integers(8, 14))
        shape = (c, length)
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["conv", "bn", "act", "res", "pool"]))
            if kind == "conv":
                k, s = draw(st.integers(1, 3)), draw(st.integers(1, 2))
                c_out = draw(st.integers(1, 4))
                if length + 2 * (k // 2) < k:
                    continue
                layers.append(nn.Conv1d(c, c_out, k, stride=s, padding=k // 2))
                length, c = (length + 2 * (k // 2) - k) // s + 1, c_out
            elif kind == "bn":
                layers.append(_random_bn(nn.BatchNorm1d(c), g))
            elif kind == "act":
                layers.append(act())
            elif kind == "pool" and length >= 2:
                pool = draw(st.sampled_from(["max", "avg"]))
                layers.append(nn.MaxPool1d(2) if pool == "max" else nn.AvgPool1d(2))
                length //= 2
            elif kind == "res":
                branch = nn.Sequential(nn.Conv1d(c, c, 3, padding=1), _random_bn(nn.BatchNorm1d(c), g),
                                       act(), nn.Conv1d(c, c, 3, padding=1))
                shortcut = nn.Identity() if draw(st.booleans()) else nn.Conv1d(c, c, 1)
                layers.append(_Residual(branch, shortcut, act()))
        layers += [nn.Flatten(), nn.Linear(c * length, draw(st.integers(2, 5)))]
    else:
        d = draw(st.integers(2, 6))
        shape = (d,)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["linear", "bn", "act", "res"]))
            if kind == "linear":
                d_out = draw(st.integers(1, 6))
                layers.append(nn.Linear(d, d_out))
                d = d_out
            elif kind == "bn":
                layers.append(_random_bn(nn.BatchNorm1d(d), g))
            elif kind == "act":
                layers.append(act())
            else:
                branch = nn.Sequential(nn.Linear(d, d), act(), nn.Linear(d, d))
                shortcut = nn.Identity() if draw(st.booleans()) else nn.Linear(d, d, bias=False)
                layers.append(_Residual(branch, shortcut, act()))
        layers.append(nn.Linear(d, draw(st.integers(2, 5))))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    return nn.Sequential(*layers).eval(), shape, scale, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_networks())
def test_upper_bound_never_below_empirical_lower_bound(case):
    net, shape, scale, seed = case
    assert_upper_bound_holds(net, shape, scale, seed, samples=64)


def _dense_operator_norm(fn, shape) -> float:
    jac = torch.autograd.functional.jacobian(fn, torch.zeros(1, *shape, dtype=torch.float64))
    jac = jac.reshape(-1, math.prod(shape))
    return float(torch.linalg.svdvals(jac)[0]) if jac.numel() else 0.0


@pytest.mark.parametrize("conv, n", [
    (nn.Conv1d(2, 3, 3, stride=1, padding=1), 9),
    (nn.Conv1d(2, 3, 4, stride=2, padding=2, dilation=2), 11),
    (nn.Conv1d(4, 6, 3, stride=3, groups=2), 10),
    (nn.Conv1d(2, 3, 3, padding="same", dilation=2), 8),
    (nn.Conv1d(2, 3, 2, padding="valid"), 5),
    (nn.Conv2d(2, 3, 3, stride=2, padding=1), 7),
    (nn.Conv2d(2, 2, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1)), 8),
    (nn.Conv2d(3, 4, 1, stride=2), 6),
    (nn.Conv2d(4, 4, 3, padding=1), 1),
])
def test_conv_bounds_against_the_exact_operator_norm(conv, n):
    torch.manual_seed(0)
    conv = conv.double()
    d = conv.weight.dim() - 2
    shape = (conv.in_channels,) + (n,) * d
    exact = _dense_operator_norm(lambda x: conv._conv_forward(x, conv.weight, None), shape)
    if conv.padding == "same":
        total = tuple(dil * (k - 1) for k, dil in zip(conv.kernel_size, conv.dilation, strict=True))
        left = tuple(t // 2 for t in total)
    elif conv.padding == "valid":
        left = total = (0,) * d
    else:
        left, total = conv.padding, tuple(2 * p for p in conv.padding)
    kwargs = {"stride": conv.stride, "dilation": conv.dilation, "groups": conv.groups}
    fft = conv_operator_norm(conv.weight, (n,) * d, padding=total, **kwargs)
    out_size = conv(torch.zeros(1, *shape, dtype=torch.float64)).shape[2:]
    dense = conv_matrix_norm(conv.weight, (n,) * d, padding_left=left, output_size=out_size, **kwargs)
    assert dense == pytest.approx(exact, rel=1e-9)
    assert exact <= fft * (1 + 1e-9)
    if n > 1:  # on a 1x1 map the circular embedding is loose; that is what the dense path is for
        assert fft <= 2.5 * exact
    if conv.kernel_size == (1,) * d:  # pointwise: the Fourier bound is the channel matrix's norm, exactly
        assert fft == pytest.approx(exact, rel=1e-9)
    chosen = lipschitz_upper_bound(conv, shape).value
    assert chosen in (pytest.approx(fft, rel=1e-12), pytest.approx(dense, rel=1e-12))


def test_conv_bound_uses_fft_on_large_maps():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    fft = conv_operator_norm(conv.weight, (20, 20), stride=(1, 1), padding=(2, 2), dilation=(1, 1))
    assert lipschitz_upper_bound(conv, (3, 20, 20)).value == pytest.approx(fft, rel=1e-12)


@pytest.mark.parametrize("pool, shape, tight", [
    (nn.AvgPool1d(3, stride=2, padding=1), (2, 9), False),
    (nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False), (2, 9), False),
    (nn.AvgPool2d(2), (1, 6, 6), True),
    (nn.AvgPool2d(3, stride=1, ceil_mode=True, divisor_override=2), (1, 5, 5), False),
    (nn.AdaptiveAvgPool2d(1), (2, 4, 4), True),
    (nn.AdaptiveAvgPool1d(3), (1, 7), False),
])
def test_average_pool_bounds_dominate_exact_norm(pool, shape, tight):
    exact = _dense_operator_norm(pool, shape)
    bound = lipschitz_upper_bound(pool, shape).value
    assert exact <= bound * (1 + 1e-9)
    if tight:  # global and non-overlapping averages: the Schur test is exact
        assert bound == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("pool, shape, expected", [
    (nn.MaxPool1d(2), (2, 8), 1.0),
    (nn.MaxPool1d(3, stride=1), (1, 8), math.sqrt(3)),
    (nn.MaxPool2d(3, stride=2, padding=1), (1, 7, 7), 2.0),
    (nn.AdaptiveMaxPool1d(4), (1, 7), math.sqrt(2)),
])
def test_max_pool_bound(pool, shape, expected):
    assert lipschitz_upper_bound(pool, shape).value == pytest.approx(expected)
    x = torch.randn(200, *shape)
    y = x + 0.01 * torch.randn_like(x)
    ratio = (pool(x) - pool(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= expected * (1 + 1e-6)


@pytest.mark.parametrize("block, shape", [
    (BasicBlock(4, 4, stride=1), (4, 6, 6)),
    (BasicBlock(3, 5, stride=2), (3, 7, 7)),
    (Bottleneck(6, 2, stride=2), (6, 6, 6)),
    (BasicBlock(3, 5, stride=2, dims=1), (3, 11)),
    (Bottleneck(4, 2, stride=2, dims=1), (4, 9)),
])
def test_resnet_blocks(block, shape):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            _random_bn(m, g)
    block.eval()
    bound = lipschitz_upper_bound(block, shape)
    by_name = {layer.name: layer.bound for layer in bound.layers}
    silu = 1.09984
    if isinstance(block, BasicBlock):
        branch = by_name["conv1"] * by_name["bn1"] * silu * by_name["conv2"] * by_name["bn2"]
    else:
        branch = (by_name["conv1"] * by_name["bn1"] * silu * by_name["conv2"] * by_name["bn2"] * silu
                  * by_name["conv3"] * by_name["bn3"])
    assert bound.value == pytest.approx(silu * (branch + by_name["shortcut"]), rel=1e-12)
    x = torch.randn(64, *shape)
    lower = lipschitz_lower_bound(nn.Sequential(block, nn.Flatten()), x, candidates=None).value
    assert lower <= bound.value


@pytest.mark.parametrize("backbone, options", [
    ("mlp", {"hidden": (16, 16), "batch_norm": True}),
    ("cnn1d", {"channels": (4, 4, 4), "batch_norm": True}),
    ("cnn1d", {"channels": (3, 5, 4)}),
])
def test_lpc_models_are_walked(backbone, options):
    torch.manual_seed(0)
    model = build_model(backbone, "LPC", (DIM,), CLASSES, latent_dim=8, **options)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            _random_bn(m, g)
    bound = lipschitz_upper_bound(model, (DIM,))
    leaves = [layer for layer in bound.layers if layer.leaf]
    assert {layer.kind for layer in leaves} >= {"Linear", "SiLU"}
    assert bound.value == pytest.approx(math.prod(layer.bound for layer in leaves), rel=1e-12)
    lower = lipschitz_lower_bound(model, torch.randn(32, DIM), candidates=None)
    assert lower.value <= bound.value


def test_one_dimensional_resnet_is_walked():
    torch.manual_seed(0)
    model = build_model("resnet18", "LPC", (DIM,), CLASSES, latent_dim=8, width=4)
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            _random_bn(m, g)
    bound = lipschitz_upper_bound(model, (DIM,))
    assert {layer.kind for layer in bound.layers if layer.leaf} >= {"Conv1d", "BatchNorm1d", "SiLU", "Linear"}
    lower = lipschitz_lower_bound(model, torch.randn(32, DIM), candidates=None)
    assert 0 < lower.value <= bound.value < math.inf


def test_errors_for_unsupported_or_unbounded_modules():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return 2 * self.lin(x)

    class Square(nn.Module):
        def forward(self, x):
            return x * x

    # Without a module rule the forward is traced: 2 * lin(x) has the closed form 2 ||W||.
    torch.manual_seed(0)
    custom = Custom()
    sigma = float(torch.linalg.svdvals(custom.lin.weight.detach().double())[0])
    assert lipschitz_upper_bound(custom, (3,)).value == pytest.approx(2 * sigma, rel=1e-12)
    with pytest.raises(LipschitzRuleError, match="Square"):
        lipschitz_upper_bound(nn.Sequential(nn.Linear(3, 3), Square()), (3,))
    # A declared structure that does not reproduce the forward is refused, not trusted.
    with pytest.raises(LipschitzRuleError, match="does not reproduce"):
        lipschitz_upper_bound(Custom(), (3,), rules={Custom: chain_rule("lin")})
    cosine = build_model("mlp", "ArcFace", (DIM,), CLASSES, hidden=(8,))
    with pytest.raises(UnboundedLipschitzError, match="cosine"):
        lipschitz_upper_bound(cosine, (DIM,))
    with pytest.raises(UnboundedLipschitzError):
        lipschitz_upper_bound(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), (3,))
    with pytest.raises(UnboundedLipschitzError, match="running statistics"):
        lipschitz_upper_bound(nn.BatchNorm1d(3, track_running_stats=False), (3,))


# --------------------------------------------------------------------------------- certified radius


def test_certified_radius_never_exceeds_deepfool(trained_mlp):
    model, x, _ = trained_mlp
    upper = lipschitz_upper_bound(model, (DIM,))
    radius = certified_radius(model, x, upper)
    result = deepfool(model, x)
    assert result.success.all()
    assert (radius <= result.norms.double()).all()
    margins, _ = logit_margins(model, x)
    torch.testing.assert_close(radius, margins.double() / (math.sqrt(2) * upper.value))
    # Also on an (untrained) 1-D CNN with batch norm and strides.
    torch.manual_seed(0)
    cnn = build_model("cnn1d", "LPC", (DIM,), CLASSES, channels=(6, 6, 6), batch_norm=True, latent_dim=8)
    cnn.eval()
    r_cnn = certified_radius(cnn, x[:60], lipschitz_upper_bound(cnn, (DIM,)))
    df = deepfool(cnn, x[:60])
    assert (r_cnn[df.success] <= df.norms[df.success].double()).all()


def test_certified_accuracy():
    radius = torch.tensor([0.0, 0.2, 0.5, 1.0])
    correct = torch.tensor([True, True, False, True])
    assert certified_accuracy(radius, correct, 0.1) == pytest.approx(0.5)
    np.testing.assert_allclose(certified_accuracy(radius, correct, [0.0, 0.3, 1.0]), [0.5, 0.25, 0.0])
    assert math.isnan(certified_accuracy(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 0.1))
    with pytest.raises(ValueError):
        certified_accuracy(radius, correct[:2], 0.1)


# ----------------------------------------------------------------------------------------- report


def test_robustness_report_and_json(trained_mlp, tmp_path):
    model, x, y = trained_mlp
    report = robustness_report(model, x[:80], y[:80], eps=(0.1, 1.0))
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in report.items())
    assert report["n_samples"] == 80 and report["deepfool_success_rate"] == 1.0
    assert report["lipschitz_lower"] <= report["lipschitz_upper"]
    assert report["certified_accuracy@0.1"] <= report["deepfool_accuracy@0.1"] <= report["accuracy"]
    assert report["certified_accuracy@1"] <= report["certified_accuracy@0.1"]
    # the minimum-norm attack: every sample fooled, never farther than DeepFool's refined points
    assert report["fmn_success_rate"] == 1.0 and report["fmn_steps"] == 100
    assert report["fmn_mean_relative_norm"] <= 1.01 * report["deepfool_refined_mean_relative_norm"]
    assert report["fmn_median_relative_norm"] <= 1.01 * report["deepfool_refined_median_relative_norm"]
    for e in ("0.1", "1"):
        assert report[f"certified_accuracy@{e}"] <= report[f"fmn_accuracy@{e}"] <= report[f"deepfool_accuracy@{e}"]
    path = write_robustness_json(report, tmp_path / "run" / "robustness.json")
    assert read_robustness_json(path) == pytest.approx(report)

    cosine = build_model("mlp", "CosFace", (DIM,), CLASSES, hidden=(8,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cos_report = robustness_report(cosine, x[:10], y[:10], max_iter=10)
    assert any("no finite Lipschitz bound" in str(w.message) for w in caught)
    assert cos_report["lipschitz_upper"] == math.inf
    back = read_robustness_json(write_robustness_json(cos_report, tmp_path / "cos.json"))
    assert math.isnan(back["lipschitz_upper"])


def test_robustness_report_runs_deepfool_once_and_fmn_from_its_points(trained_mlp, monkeypatch):
    import importlib

    fmn_module = importlib.import_module("lpc_geom.analysis.robustness.fmn")  # the package's fmn is the function
    report_module = importlib.import_module("lpc_geom.analysis.robustness.report")

    model, x, y = trained_mlp
    expected = fmn(model, x[:40], steps=20, return_perturbations=False).summary()
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return deepfool(*args, **kwargs)

    monkeypatch.setattr(report_module, "deepfool", counted)
    monkeypatch.setattr(fmn_module, "deepfool", counted)
    report = robustness_report(model, x[:40], y[:40], fmn_steps=20, lipschitz=False)
    assert len(calls) == 1
    assert {k: v for k, v in report.items() if k in expected} == expected
    calls.clear()  # another DeepFool than FMN's start: FMN runs its own
    robustness_report(model, x[:40], y[:40], fmn_steps=20, lipschitz=False, candidates=3)
    assert len(calls) == 2 and calls[1].get("candidates") is None


def test_attacks_leave_requires_grad_and_modes_as_they_were():
    from lpc_geom.analysis.robustness._common import evaluation_mode

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.SiLU(), nn.Linear(8, 3)).train()
    model[0].weight.requires_grad_(False)  # partly frozen by its user
    before = [p.requires_grad for p in model.parameters()]
    with evaluation_mode(model):
        assert not any(p.requires_grad for p in model.parameters()) and not model.training
        with evaluation_mode(model):
            pass
        assert not any(p.requires_grad for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == before and model.training
    with pytest.raises(RuntimeError, match="boom"), evaluation_mode(model):
        raise RuntimeError("boom")
    assert [p.requires_grad for p in model.parameters()] == before
    deepfool(model, torch.randn(6, 4), max_iter=3)
    fmn(model, torch.randn(6, 4), steps=3)
    assert [p.requires_grad for p in model.parameters()] == before and model.training
    assert all(p.grad is None for p in model.parameters())


def test_robustness_report_without_a_rule_or_labels():
    class NoRule(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(DIM, 3)

        def forward(self, x):
            h = self.lin(x)
            return h * h.tanh()  # a product of input-dependent values: no rule bounds it

    x = torch.randn(12, DIM)
    with pytest.warns(UserWarning, match="not computed"):
        report = robustness_report(NoRule(), x, max_iter=10)
    assert math.isnan(report["lipschitz_upper"]) and math.isnan(report["certified_radius_mean"])
    assert report["lipschitz_lower"] > 0 and "accuracy" not in report
    plain = robustness_report(NoRule(), x, max_iter=10, lipschitz=False, fmn_steps=0)
    assert not any(k.startswith(("lipschitz", "certified", "fmn")) for k in plain)
    with pytest.raises(ValueError, match="fmn_steps"):
        robustness_report(NoRule(), x, fmn_steps=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(trained_mlp):
    model, x, _ = trained_mlp
    cpu = deepfool(model, x[:50])
    gpu_model = build_model("mlp", "LPC", (DIM,), CLASSES, hidden=(64, 64), latent_dim=16)
    gpu_model.load_state_dict(model.state_dict())
    gpu = deepfool(gpu_model.cuda(), x[:50])
    torch.testing.assert_close(gpu.norms, cpu.norms, rtol=1e-3, atol=1e-5)
    assert lipschitz_upper_bound(gpu_model, (DIM,)).value == pytest.approx(
        lipschitz_upper_bound(model, (DIM,)).value, rel=1e-6)


def test_stiefel_head_bound_is_the_classifier_norm_times_one():
    from lpc_geom.models.geometry import StiefelHead

    head = StiefelHead(12, 5, 4)
    bound = lipschitz_upper_bound(head, (12,))
    expected = float(torch.linalg.matrix_norm(head.classifier.weight.detach(), ord=2))
    assert bound.value == pytest.approx(expected, rel=1e-5)  # orthonormal projection: Lipschitz exactly 1
    x = torch.randn(64, 12)
    assert lipschitz_lower_bound(head, x).value <= bound.value * (1 + 1e-6)
