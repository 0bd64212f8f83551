"""Lipschitz upper bounds of traced (functional-style) models: closed forms, soundness, errors, registration."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from bounds import assert_upper_bound_holds, seeded_generator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lpc_geom.analysis.robustness import (
    FUNCTION_RULES,
    FunctionCall,
    LipschitzRuleError,
    UnboundedLipschitzError,
    elementwise_rule,
    lipschitz_lower_bound,
    lipschitz_upper_bound,
    register_lipschitz_rule,
    robustness_report,
)
from lpc_geom.analysis.robustness.spectral import conv_layer_norm
from lpc_geom.models.base import HeadOutput
from lpc_geom.models.heads import EuclideanHead


def _sigma(w: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(w.detach().double())[0])


def _jacobian_norm(fn, x: torch.Tensor) -> float:
    """Largest Jacobian norm of ``fn`` (one sample) over the rows of ``x``, in float64."""
    best = 0.0
    for row in x.double():
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0].flatten(), row)
        best = max(best, float(torch.linalg.svdvals(jac.reshape(jac.shape[0], -1))[0]))
    return best


class Lambda(nn.Module):
    """A module whose forward is a given function (with optional parameters), traced by the bound."""

    def __init__(self, fn, **tensors):
        super().__init__()
        self.fn = fn
        for name, t in tensors.items():
            self.register_buffer(name, t)

    def forward(self, x):
        return self.fn(self, x)


# ----------------------------------------------------------------------------------- closed forms


def test_linear_chain_is_the_product_and_one_layer_is_exact():
    torch.manual_seed(0)
    w1, w2 = torch.randn(6, 5), torch.randn(3, 6)
    one = Lambda(lambda m, x: F.linear(x, m.w1), w1=w1)
    assert lipschitz_upper_bound(one, (5,)).value == pytest.approx(_sigma(w1), rel=1e-12)
    assert lipschitz_lower_bound(one, torch.randn(4, 5), candidates=None).value == pytest.approx(_sigma(w1), rel=1e-5)
    chain = Lambda(lambda m, x: F.relu(x @ m.w1.t()) @ m.w2.t(), w1=w1, w2=w2)
    assert lipschitz_upper_bound(chain, (5,)).value == pytest.approx(_sigma(w1) * _sigma(w2), rel=1e-12)


def test_residual_with_a_psd_matrix_is_exact():
    # ||I + A|| = 1 + ||A|| for A symmetric positive semi-definite: the bound L(id) + L(A) is attained.
    torch.manual_seed(1)
    b = torch.randn(5, 5)
    a = b @ b.t() / 5
    model = Lambda(lambda m, x: x + x @ m.a, a=a)
    upper = lipschitz_upper_bound(model, (5,)).value
    assert upper == pytest.approx(1 + _sigma(a), rel=1e-12)
    assert lipschitz_lower_bound(model, torch.randn(3, 5), candidates=None).value == pytest.approx(upper, rel=1e-5)


@pytest.mark.parametrize("fn, shape, expected", [
    (lambda m, x: 3 * x - 2 * (x @ m.w), (4,), None),  # weighted sum: 3 + 2 ||W||
    (lambda m, x: torch.cat([x, x], dim=1), (4,), math.sqrt(2)),  # exact
    (lambda m, x: x.mean(dim=-1, keepdim=True), (9,), 1 / 3),  # exact: 1/sqrt(k)
    (lambda m, x: x.sum(-1), (4,), 2.0),
    (lambda m, x: torch.flatten(x, 1)[:, 2:5], (2, 3), 1.0),
    (lambda m, x: x.view(x.size(0), -1).unsqueeze(1).expand(-1, 3, -1), (4,), math.sqrt(3)),  # 3 copies
    (lambda m, x: x.permute(0, 2, 1).reshape(x.shape[0], -1) / 4, (2, 3), 0.25),
    (lambda m, x: F.max_pool1d(x, 3, stride=1), (1, 8), math.sqrt(3)),  # overlapping windows
    (lambda m, x: F.max_pool1d(x, 2), (2, 8), 1.0),
    (lambda m, x: F.avg_pool2d(x, 2), (1, 4, 4), 0.5),  # non-overlapping: Schur test is exact
    (lambda m, x: F.adaptive_avg_pool1d(x, 1), (2, 9), 1 / 3),
    (lambda m, x: torch.softmax(x, dim=1), (3,), 0.5),
    (lambda m, x: F.pad(x, (1, 2)) * 2, (1, 4), 2.0),
    (lambda m, x: F.dropout(x, 0.5, training=m.training), (4,), 1.0),
    (lambda m, x: x.chunk(2, dim=1)[1] + torch.zeros_like(x)[:, :2], (4,), 1.0),
])
def test_functional_closed_forms(fn, shape, expected):
    torch.manual_seed(2)
    w = torch.randn(shape[-1], shape[-1])
    model = Lambda(fn, w=w).eval()
    if expected is None:
        expected = 3 + 2 * _sigma(w)
    assert lipschitz_upper_bound(model, shape).value == pytest.approx(expected, rel=1e-9)
    x = torch.randn(16, *shape)
    assert _jacobian_norm(model.double(), x) <= expected * (1 + 1e-9)


_ACTIVATIONS = [
    (F.relu, nn.ReLU(), 1.0), (torch.tanh, nn.Tanh(), 1.0), (torch.sigmoid, nn.Sigmoid(), 0.25),
    (F.silu, nn.SiLU(), 1.0998393), (F.gelu, nn.GELU(), 1.1289041),
    (lambda x: F.gelu(x, approximate="tanh"), nn.GELU(approximate="tanh"), 1.1289931),
    (F.mish, nn.Mish(), 1.0884982), (lambda x: F.leaky_relu(x, 3.0), nn.LeakyReLU(3.0), 3.0),
    (lambda x: F.elu(x, 2.0), nn.ELU(2.0), 2.0), (F.selu, nn.SELU(), 1.0507009873554805 * 1.6732632423543772),
    (F.hardswish, nn.Hardswish(), 1.5), (F.softplus, nn.Softplus(), 1.0), (F.hardsigmoid, nn.Hardsigmoid(), 1 / 6),
    (torch.abs, None, 1.0), (lambda x: x.clamp(-1, 2), None, 1.0),
]


@pytest.mark.parametrize("fn, module, sup", _ACTIVATIONS)
def test_activation_constants_match_the_supremum_of_the_derivative(fn, module, sup):
    grid = torch.linspace(-30, 30, 600001, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(fn(grid).sum(), grid)
    measured = float(slope.abs().max())
    assert measured == pytest.approx(sup, rel=1e-6)  # the closed form (or the known digits) is the supremum
    functional = lipschitz_upper_bound(Lambda(lambda m, x: fn(x)), (3,)).value
    # Rounded up, not down (hardsigmoid's backward uses a float32 1/6, a few ulps above the closed form).
    assert measured <= functional * (1 + 1e-7) and functional <= measured * (1 + 1e-4)
    if module is not None:
        assert lipschitz_upper_bound(module, (3,)).value == functional


# --------------------------------------------------------------------- a functional CNN, written here


class FunctionalCNN(nn.Module):
    """The most common PyTorch style: parameters in modules, activations, flatten and residuals in forward."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.weight3 = nn.Parameter(torch.randn(8, 8, 3, 3) / 8)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = h + self.conv2(F.relu(h))  # residual add
        h = F.max_pool2d(h, 2)
        h = F.silu(F.conv2d(h, self.weight3, padding=1)) + 0.5 * h
        h = torch.flatten(h, 1)
        return self.fc(F.dropout(h, 0.2, training=self.training))


def _randomise_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.1)


def test_functional_cnn_gets_a_finite_sound_bound():
    torch.manual_seed(0)
    model = FunctionalCNN()
    _randomise_bn(model, 0)
    model.eval()
    bound = lipschitz_upper_bound(model, (1, 8, 8))
    by_name = {layer.name: layer.bound for layer in bound.layers}
    assert {"conv1", "bn1", "conv2", "fc"} <= set(by_name)
    # The graph's composition, by hand: relu 1, max pool (non-overlapping) 1, dropout 1, SiLU 1.09984.
    l3 = conv_layer_norm(model.weight3, (8, 4, 4), (8, 4, 4), stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    l1 = by_name["conv1"] * by_name["bn1"]
    expected = l1 * (1 + by_name["conv2"]) * (1.09984 * l3 + 0.5) * by_name["fc"]
    assert bound.value == pytest.approx(expected, rel=1e-12)
    x = torch.randn(128, 1, 8, 8)
    lower = lipschitz_lower_bound(model, x, candidates=None).value
    assert 0 < lower <= bound.value < math.inf
    y = x + 1e-2 * torch.randn_like(x)
    with torch.no_grad():
        ratio = (model(x) - model(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= bound.value


def test_a_classifier_with_a_functional_backbone_is_bounded():
    from lpc_geom.models.base import Classifier
    from lpc_geom.models.heads import build_head

    torch.manual_seed(0)
    backbone = FunctionalCNN(classes=16)
    model = Classifier(backbone, build_head("LPC", 16, 10)).eval()
    bound = lipschitz_upper_bound(model, (1, 8, 8))
    by_name = {layer.name: layer.bound for layer in bound.layers}
    assert bound.value == pytest.approx(by_name["backbone"] * by_name["head"], rel=1e-12)
    assert by_name["backbone"] == pytest.approx(lipschitz_upper_bound(backbone, (1, 8, 8)).value, rel=1e-12)
    lower = lipschitz_lower_bound(model, torch.randn(64, 1, 8, 8), candidates=None).value
    assert 0 < lower <= bound.value < math.inf


def test_robustness_report_of_a_functional_model_is_finite():
    torch.manual_seed(0)
    model = FunctionalCNN().eval()
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not computed" warning any more
        report = robustness_report(model, x, y, max_iter=5, eps=(0.1,))
    assert math.isfinite(report["lipschitz_upper"]) and report["lipschitz_lower"] > 0
    assert report["lipschitz_lower"] <= report["lipschitz_upper"]
    assert report["lipschitz_looseness"] == pytest.approx(report["lipschitz_upper"] / report["lipschitz_lower"])
    assert math.isfinite(report["certified_radius_mean"])


class BackboneWithHead(nn.Module):
    def __init__(self, logits_only: bool):
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.head = EuclideanHead(8, 4, penultimate="nonlinear", latent_dim=5)
        self.logits_only = logits_only

    def forward(self, x):
        out = self.head(F.gelu(self.lin(x)) + x.repeat(1, 2)[:, :8])
        return out.logits if self.logits_only else HeadOutput(out.logits, out.latents, out.energy)


@pytest.mark.parametrize("logits_only", [True, False])
def test_project_heads_keep_their_module_rules_inside_a_traced_model(logits_only):
    torch.manual_seed(0)
    model = BackboneWithHead(logits_only).eval()
    bound = lipschitz_upper_bound(model, (6,))
    by_name = {layer.name: layer.bound for layer in bound.layers}
    head = by_name["head"]
    assert head == pytest.approx(_sigma(model.head.penultimate[0].weight) * 1.09984
                                 * _sigma(model.head.classifier.weight), rel=1e-12)
    # repeat(1, 2)[:, :8] copies the first two features twice: sqrt(2) by the measured multiplicity.
    assert bound.value == pytest.approx((1.129 * by_name["lin"] + math.sqrt(2)) * head, rel=1e-12)
    assert lipschitz_lower_bound(model, torch.randn(32, 6), candidates=None).value <= bound.value


# -------------------------------------------------------------------------------- property test


_FUNCTIONAL_ACTS = (F.relu, torch.tanh, F.silu, F.gelu, torch.sigmoid, lambda h: F.leaky_relu(h, 2.5), F.elu,
                    lambda h: h.relu(), F.softplus, F.mish, lambda h: h)


class Program(nn.Module):
    """A random functional-style network: a list of ops, unrolled by tracing."""

    def __init__(self, ops, params, modules):
        super().__init__()
        self.ops = ops
        self.params = nn.ParameterList(params)
        self.mods = nn.ModuleList(modules)

    def forward(self, x):
        h = x
        for kind, arg in self.ops:
            if kind == "act":
                h = _FUNCTIONAL_ACTS[arg](h)
            elif kind == "linear":
                h = F.linear(h, self.params[arg])
            elif kind == "module":
                h = self.mods[arg](h)
            elif kind == "res":
                i, a, act = arg
                h = h + a * F.linear(_FUNCTIONAL_ACTS[act](h), self.params[i])
            elif kind == "conv":
                i, stride = arg
                h = F.conv1d(h, self.params[i], stride=stride, padding=1)
            elif kind == "convres":
                i, a = arg
                h = a * F.conv1d(F.relu(h), self.params[i], padding=1) - h
            elif kind == "maxpool":
                h = F.max_pool1d(h, arg[0], stride=arg[1])
            elif kind == "avgpool":
                h = F.avg_pool1d(h, arg[0], stride=arg[1])
            elif kind == "cat":
                h = torch.cat([h, _FUNCTIONAL_ACTS[arg](h)], dim=1)
            elif kind == "flatten":
                h = torch.flatten(h, 1) if arg == 0 else (h.view(h.size(0), -1) if arg == 1 else h.mean(-1))
        return h


@st.composite
def programs(draw):
    seed, g = seeded_generator(draw)
    ops, params, modules = [], [], []

    def weight(*shape):
        params.append(nn.Parameter(torch.randn(*shape, generator=g) / math.sqrt(shape[1])))
        return len(params) - 1

    act = st.integers(0, len(_FUNCTIONAL_ACTS) - 1)
    if draw(st.booleans()):  # 1-D convolutional
        c, length = draw(st.integers(1, 3)), draw(st.integers(6, 12))
        shape = (c, length)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["conv", "convres", "act", "maxpool", "avgpool", "cat", "module"]))
            if kind == "conv":
                c_out, stride = draw(st.integers(1, 4)), draw(st.integers(1, 2))
                ops.append(("conv", (weight(c_out, c, 3), stride)))
                c, length = c_out, (length - 1) // stride + 1
            elif kind == "convres":
                ops.append(("convres", (weight(c, c, 3), draw(st.sampled_from([0.5, 1.0, -2.0])))))
            elif kind == "act":
                ops.append(("act", draw(act)))
            elif kind in ("maxpool", "avgpool") and length >= 3:
                k, s = draw(st.integers(2, 3)), draw(st.integers(1, 2))
                ops.append((kind, (k, s)))
                length = (length - k) // s + 1
            elif kind == "cat" and c <= 4:
                ops.append(("cat", draw(act)))
                c *= 2
            elif kind == "module":
                modules.append(nn.Conv1d(c, c, 3, padding=1))
                ops.append(("module", len(modules) - 1))
        flatten = draw(st.integers(0, 2))
        ops.append(("flatten", flatten))
        features = c if flatten == 2 else c * length
    else:
        d = draw(st.integers(2, 6))
        shape = (d,)
        for _ in range(draw(st.integers(1, 5))):
            kind = draw(st.sampled_from(["linear", "res", "act", "cat", "module"]))
            if kind == "linear":
                d_out = draw(st.integers(1, 6))
                ops.append(("linear", weight(d_out, d)))
                d = d_out
            elif kind == "res":
                ops.append(("res", (weight(d, d), draw(st.sampled_from([0.3, 1.0, -1.5])), draw(act))))
            elif kind == "act":
                ops.append(("act", draw(act)))
            elif kind == "cat" and d <= 6:
                ops.append(("cat", draw(act)))
                d *= 2
            elif kind == "module":
                modules.append(nn.Sequential(nn.Linear(d, d), nn.SiLU()))
                ops.append(("module", len(modules) - 1))
        features = d
    ops.append(("linear", weight(draw(st.integers(2, 5)), features)))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    return Program(ops, params, modules).eval(), shape, scale, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_traced_bound_never_below_the_empirical_lower_bound(case):
    net, shape, scale, seed = case
    assert_upper_bound_holds(net, shape, scale, seed, samples=48)


# ------------------------------------------------------------------------------ errors and rules


def test_a_node_without_a_rule_is_named_with_its_line_and_how_to_register_one():
    model = Lambda(lambda m, x: torch.erf(x) + 1)
    with pytest.raises(LipschitzRuleError) as info:
        lipschitz_upper_bound(model, (3,))
    message = str(info.value)
    for part in ("'erf'", "call_function torch.erf", "test_lipschitz_fx.py:", "torch.erf(x) + 1",
                 "register_lipschitz_rule(torch.erf, rule)", "Lambda"):
        assert part in message, part
    # A rule for this call only, then a registered one.
    c = 2 / math.sqrt(math.pi)  # sup |erf'|
    assert lipschitz_upper_bound(model, (3,), rules={torch.erf: elementwise_rule(c)}).value == pytest.approx(c)
    register_lipschitz_rule(torch.erf, elementwise_rule(c))
    try:
        assert lipschitz_upper_bound(model, (3,)).value == pytest.approx(c)
        with pytest.raises(ValueError, match="already registered"):
            register_lipschitz_rule(torch.erf, elementwise_rule(1.0))
    finally:
        del FUNCTION_RULES[torch.erf]


def scaled_soft_sign(x):
    """A helper of the user's own; with a rule it stays one node (not traced into)."""
    return 3 * x / (1 + x.abs())


def test_rules_for_python_functions_and_methods():
    model = Lambda(lambda m, x: scaled_soft_sign(x))
    with pytest.raises(LipschitzRuleError, match="division by an input-dependent value"):
        lipschitz_upper_bound(model, (3,))
    seen: list[FunctionCall] = []

    def rule(call: FunctionCall) -> float:
        seen.append(call)
        return 3.0 * call.input_bound  # sup |d/dx 3x/(1+|x|)| = 3

    assert lipschitz_upper_bound(model, (3,), rules={scaled_soft_sign: rule}).value == 3.0
    assert seen and seen[0].node.target is scaled_soft_sign and seen[0].args[0].shape[1:] == (3,)
    method = Lambda(lambda m, x: x.erf())
    assert lipschitz_upper_bound(method, (3,), rules={"erf": elementwise_rule(1.2)}).value == pytest.approx(1.2)


@pytest.mark.parametrize("fn, match", [
    (lambda m, x: x * x, "product"),
    (lambda m, x: x / x.norm(dim=1, keepdim=True), "division by an input-dependent"),
    (lambda m, x: x - x.mean(0), "batch axis"),
    (lambda m, x: x.view(-1)[:3].sum() + x, "batch axis"),
    (lambda m, x: torch.cat([x, x], 0), "batch axis"),
    (lambda m, x: x.t(), "batch axis"),
    (lambda m, x: F.dropout(x, 0.1), "training=True"),
    (lambda m, x: x * m.calls(), "does not reproduce"),  # Python state, frozen by the trace
    (lambda m, x: F.silu(x, inplace=True) + x, "in place"),
    (lambda m, x: x[:, x.argmax(1)], "input-dependent indices|no rule"),
])
def test_unsound_or_unsupported_graphs_are_refused(fn, match):
    model = Lambda(fn)
    model.calls = iter(range(1, 100)).__next__
    with pytest.raises(LipschitzRuleError, match=match):
        lipschitz_upper_bound(model, (4,))


class WithFlags(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, return_latents: bool = False, scale: float = 2.0):
        h = scale * F.relu(self.lin(x))
        return (h, x) if return_latents else h


def test_further_forward_parameters_keep_their_defaults_and_casts_must_stay_floating():
    model = WithFlags()
    assert lipschitz_upper_bound(model, (4,)).value == pytest.approx(2 * _sigma(model.lin.weight), rel=1e-12)
    with pytest.raises(LipschitzRuleError, match="rounds the values"):
        lipschitz_upper_bound(Lambda(lambda m, x: x.to(torch.int64).to(torch.float32)), (4,))
    assert lipschitz_upper_bound(Lambda(lambda m, x: x.double() * 2), (4,)).value == 2.0


def test_non_expansive_in_place_ops_are_accepted():
    model = Lambda(lambda m, x: F.relu(x @ m.w, inplace=True) + x, w=torch.eye(4) * 2)
    assert lipschitz_upper_bound(model, (4,)).value == pytest.approx(3.0)


def test_normalisations_and_sphere_heads_are_unbounded():
    with pytest.raises(UnboundedLipschitzError, match="normalising"):
        lipschitz_upper_bound(Lambda(lambda m, x: F.layer_norm(x, (4,))), (4,))
    from lpc_geom.models.geometry import build_geometry_head

    sphere = nn.Sequential(nn.Linear(6, 6), build_geometry_head("sphere", 6, 4, 3))
    with pytest.raises(UnboundedLipschitzError, match="sphere"):
        lipschitz_upper_bound(sphere, (6,))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x) if x.sum() > 0 else -self.lin(x)  # control flow on values: not traceable


def test_untraceable_models_fall_back_to_module_rules():
    model = DataDependent()
    with pytest.raises(LipschitzRuleError, match=r"cannot trace it .*register_lipschitz_rule\(DataDependent"):
        lipschitz_upper_bound(model, (3,))

    def rule(module, input_shape, walker):
        return walker.bound(module.lin, input_shape)  # both branches are +-lin: the same constant

    value = lipschitz_upper_bound(model, (3,), rules={DataDependent: rule}).value
    assert value == pytest.approx(_sigma(model.lin.weight), rel=1e-12)
