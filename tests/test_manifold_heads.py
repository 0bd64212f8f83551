"""Geometry heads: a shared property battery every head must pass, then per-head and numerical tests."""

from __future__ import annotations

import io
import math

import geoopt
import numpy as np
import pytest
import torch
from nets import TinyBackbone
from torch import nn

from lpc_geom.models.base import Classifier, HeadOutput
from lpc_geom.models.geometry import (
    GEOMETRIES,
    ManifoldConstraintError,
    ManifoldHead,
    PoincareHead,
    SphereHead,
    StiefelHead,
    ball_sqdist,
    build_geometry_head,
    check_on_manifold,
    expmap0,
    hyperbolic_mlr_logits,
    manifold_violation,
)
from lpc_geom.optim import build_optimizer

IN, D, K = 12, 6, 5


HEADS = {
    "sphere-penalised": lambda: SphereHead(IN, D, K),
    "sphere-learnable-within": lambda: SphereHead(IN, D, K, radius_mode="learnable", within_class=1.0),
    "sphere-fixed": lambda: SphereHead(IN, D, K, radius_mode="fixed", radius=8.0, within_class=0.5),
    "poincare-mlr": lambda: PoincareHead(IN, D, K),
    "poincare-mlr-learnable-c": lambda: PoincareHead(IN, D, K, c=0.5, learnable_c=True),
    "poincare-prototype-manifold-learnable-c": lambda: PoincareHead(
        IN, D, K, c=2.0, learnable_c=True, classifier="prototype", class_points="manifold"
    ),
    "stereographic-k<0": lambda: ManifoldHead(IN, D, K, manifold=geoopt.Stereographic(k=-0.7)),
    "stiefel": lambda: StiefelHead(IN, D, K),
    "stiefel-canonical": lambda: ManifoldHead(IN, D, K, manifold=geoopt.CanonicalStiefel()),
}


@pytest.fixture(params=sorted(HEADS), ids=sorted(HEADS))
def make_head(request):
    return HEADS[request.param]


@pytest.fixture
def head(make_head):
    torch.manual_seed(0)
    return make_head()


def assert_latents_on_manifold(head: ManifoldHead, latents: torch.Tensor) -> None:
    if head.manifold is None:
        return
    if isinstance(head.manifold, geoopt.Sphere):
        tol = 1e-6 if latents.dtype == torch.float32 else 1e-12
        assert manifold_violation(head.manifold, latents) <= tol
    else:
        c = float(-head.manifold.k.detach())
        assert float(latents.detach().norm(dim=-1).max()) * math.sqrt(c) < 1.0


def _loss(out: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out.logits, labels) + out.energy.mean()


# --------------------------------------------------------------------------------------------------
# Shared battery
# --------------------------------------------------------------------------------------------------


def test_head_output_contract(head):
    out = head(torch.randn(9, IN))
    assert isinstance(out, HeadOutput)
    assert out.logits.shape == (9, K) and out.latents.shape == (9, D) and out.energy.shape == (9,)
    assert all(bool(torch.isfinite(t).all()) for t in out)
    assert bool((out.energy >= 0).all())
    assert isinstance(head, ManifoldHead) and head.geometry in GEOMETRIES
    assert isinstance(head.classifier, nn.Module) and len(list(head.classifier.parameters())) > 0
    assert head.manifold is None or isinstance(head.manifold, geoopt.manifolds.Manifold)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_latents_and_parameters_on_manifold(head, scale):
    out = head(scale * torch.randn(64, IN))
    assert_latents_on_manifold(head, out.latents)
    check_on_manifold(head)


def _zero_projection_bias(head: ManifoldHead) -> None:
    bias = getattr(head.projection, "bias", None)
    if bias is not None:
        with torch.no_grad():
            bias.zero_()


def test_gradients_finite_at_the_origin(head):
    _zero_projection_bias(head)
    h = torch.zeros(4, IN, requires_grad=True)
    out = head(h)
    assert_latents_on_manifold(head, out.latents)
    _loss(out, torch.arange(4)).backward()
    assert bool(torch.isfinite(h.grad).all())
    for name, p in head.named_parameters():
        if p.grad is not None:
            assert bool(torch.isfinite(p.grad).all()), name


def test_gradients_finite_near_the_boundary(head):
    # Inputs of norm ~1e4 drive the ball latents onto geoopt's projection radius (1 - 4e-3) / sqrt(c).
    h = (1e4 * torch.randn(8, IN)).requires_grad_()
    out = head(h)
    assert_latents_on_manifold(head, out.latents)
    _loss(out, torch.arange(8) % K).backward()
    assert bool(torch.isfinite(h.grad).all())
    for name, p in head.named_parameters():
        if p.grad is not None:
            assert bool(torch.isfinite(p.grad).all()), name


def test_state_dict_round_trip(make_head):
    torch.manual_seed(0)
    model = Classifier(TinyBackbone(IN, IN), make_head())
    opt = build_optimizer(model, "riemannian-adam", lr=5e-2)
    x, y = torch.randn(32, IN), torch.arange(32) % K
    for _ in range(5):
        opt.zero_grad()
        _loss(model(x), y).backward()
        opt.step()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # a differently initialised twin
    twin = Classifier(TinyBackbone(IN, IN), make_head())
    assert not torch.equal(model(x).logits, twin(x).logits)
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(model(x), twin(x), strict=True):
        assert torch.equal(a, b)
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert type(p) is type(q), name
    check_on_manifold(twin)


def test_float64(head):
    head = head.double()
    out = head(torch.randn(16, IN, dtype=torch.float64))
    assert all(t.dtype == torch.float64 for t in out)
    assert_latents_on_manifold(head, out.latents)
    check_on_manifold(head)


# --------------------------------------------------------------------------------------------------
# Poincaré ball
# --------------------------------------------------------------------------------------------------


def _np_mobius_add(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    xy, x2, y2 = x @ y, x @ x, y @ y
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c * c * x2 * y2)


def _np_ganea_logit(z: np.ndarray, p: np.ndarray, a_origin: np.ndarray, c: float) -> float:
    """Ganea et al. (2018) eq. 25, evaluated term by term; a = P_{0->p}(a') = (lambda_0/lambda_p) a'."""
    lam_p = 2.0 / (1.0 - c * (p @ p))
    a = (2.0 / lam_p) * a_origin
    w = _np_mobius_add(-p, z, c)
    a_norm = np.linalg.norm(a)
    return lam_p * a_norm / np.sqrt(c) * np.arcsinh(2 * np.sqrt(c) * (w @ a) / ((1 - c * (w @ w)) * a_norm))


def _random_ball_points(rng, n: int, d: int, c: float, max_radius: float = 0.99) -> np.ndarray:
    directions = rng.normal(size=(n, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions * rng.uniform(0, max_radius, size=(n, 1)) / np.sqrt(c)


@pytest.mark.parametrize("c", [0.3, 1.0, 2.5])
def test_hyperbolic_mlr_matches_the_ganea_formula(rng, c):
    z = _random_ball_points(rng, 7, 4, c)
    p = _random_ball_points(rng, 3, 4, c)
    a = rng.normal(size=(3, 4))
    expected = np.array([[_np_ganea_logit(zi, pk, ak, c) for pk, ak in zip(p, a, strict=True)] for zi in z])
    got = hyperbolic_mlr_logits(*(torch.from_numpy(t) for t in (z, p, a)), torch.tensor(c, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_mlr_head_classifier_is_the_formula_at_its_class_points(rng):
    head = PoincareHead(IN, D, K, c=0.8).double()
    with torch.no_grad():
        head.classifier.offsets.points.copy_(torch.from_numpy(_random_ball_points(rng, K, D, 0.8, 0.9)))
    out = head(torch.randn(6, IN, dtype=torch.float64))
    p = head.classifier.offsets.points.detach().numpy()
    a = head.classifier.normals.detach().numpy()
    z = out.latents.detach().numpy()
    c = float(head.c.detach())  # softplus of the float32-initialised parameter: 0.8 to float32 accuracy only
    expected = np.array([[_np_ganea_logit(zi, pk, ak, c) for pk, ak in zip(p, a, strict=True)] for zi in z])
    np.testing.assert_allclose(out.logits.detach().numpy(), expected, rtol=1e-9)


def test_mlr_float32_is_accurate_for_large_negative_arguments():
    # p and z on opposite sides of the float32 projection radius: asinh argument ~ -1.2e5, where
    # geoopt's arsinh is wrong by tens with a zero gradient.
    r = 1 - 4e-3
    z = torch.tensor([[-r, 0.0, 0.0]])
    p = torch.tensor([[r, 0.0, 0.0]])
    a = torch.tensor([[1.0, 0.0, 0.0]])
    c = torch.tensor(1.0)
    exact = hyperbolic_mlr_logits(z.double(), p.double(), a.double(), c.double())
    zz = z.clone().requires_grad_()
    got = hyperbolic_mlr_logits(zz, p, a, c)
    assert float(exact) < -20
    assert abs(float(got.detach()) - float(exact)) <= 1e-5 * abs(float(exact))
    got.sum().backward()
    assert bool(torch.isfinite(zz.grad).all()) and float(zz.grad.abs().max()) > 0


@pytest.mark.parametrize("c", [0.5, 1.0, 3.0])
def test_ball_energy_is_squared_distance_to_the_origin(c):
    head = PoincareHead(IN, D, K, c=c).double()
    out = head(0.3 * torch.randn(16, IN, dtype=torch.float64))
    dist0 = head.manifold.dist0(out.latents)
    np.testing.assert_allclose(out.energy.detach().numpy(), (dist0**2).detach().numpy(), rtol=1e-9)


def test_expmap0_and_prototype_distances_match_geoopt(rng):
    ball = geoopt.PoincareBall(c=1.7).double()
    c = -ball.k
    v = torch.from_numpy(rng.normal(size=(9, 4)))
    np.testing.assert_allclose(expmap0(v, c).numpy(), ball.expmap0(v).detach().numpy(), rtol=1e-12)
    z = torch.from_numpy(_random_ball_points(rng, 9, 4, 1.7, 0.95))
    p = torch.from_numpy(_random_ball_points(rng, 3, 4, 1.7, 0.95))
    expected = ball.dist(z[:, None, :], p[None, :, :]) ** 2
    np.testing.assert_allclose(ball_sqdist(z, p, c).detach().numpy(), expected.detach().numpy(), rtol=1e-8)


def test_prototype_logits_and_gradient_at_a_prototype():
    head = PoincareHead(IN, D, K, classifier="prototype").double()
    protos = head.classifier.prototypes()
    z = protos.detach()[:2].clone().requires_grad_()  # exactly at two prototypes
    logits = head.classifier(z)
    assert abs(float(logits[0, 0].detach())) < 1e-300 and abs(float(logits[1, 1].detach())) < 1e-300
    expected = -head.manifold.dist(z[:, None, :], protos[None]) ** 2
    np.testing.assert_allclose(logits.detach().numpy(), expected.detach().numpy(), rtol=1e-8, atol=1e-12)
    logits.sum().backward()
    assert bool(torch.isfinite(z.grad).all())


def test_learnable_curvature_is_saved_and_trained():
    torch.manual_seed(0)
    head = PoincareHead(IN, D, K, c=0.5, learnable_c=True)
    assert head.class_points == "tangent" and "manifold.isp_c" in head.state_dict()
    opt = build_optimizer(head, "riemannian-adam", lr=0.05)
    c0 = float(head.c.detach())
    x, y = torch.randn(64, IN), torch.arange(64) % K
    for _ in range(10):
        opt.zero_grad()
        _loss(head(x), y).backward()
        opt.step()
    assert float(head.c.detach()) != c0
    twin = PoincareHead(IN, D, K, c=0.5, learnable_c=True)
    twin.load_state_dict(head.state_dict())
    assert float(twin.c.detach()) == float(head.c.detach())


def test_poincare_refuses_conflicting_curvatures():
    with pytest.raises(ValueError, match="either a manifold or c"):
        PoincareHead(IN, D, K, manifold=geoopt.PoincareBall(1.0), c=2.0)
    with pytest.raises(ValueError, match="classifier"):
        PoincareHead(IN, D, K, classifier="linear")


# --------------------------------------------------------------------------------------------------
# Sphere
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-3, 5.0, 1e4])
def test_sphere_head_ignores_input_scale(scale):
    torch.manual_seed(0)
    head = SphereHead(IN, D, K, within_class=1.0)
    h = torch.randn(10, IN)
    base, scaled = head(h), head(scale * h)
    for a, b in zip(base, scaled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sphere_origin_goes_to_a_fixed_unit_vector():
    head = SphereHead(IN, D, K)
    out = head(torch.zeros(3, IN))
    expected = torch.zeros(3, D)
    expected[:, 0] = 1
    assert torch.equal(out.latents, expected)
    assert torch.isnan(head.manifold.projx(torch.zeros(D))).any()  # the geoopt trap this avoids


def test_sphere_radius_modes_and_energies():
    torch.manual_seed(0)
    h = torch.randn(8, IN)
    fixed = SphereHead(IN, D, K, radius_mode="fixed", radius=4.0)
    assert "log_radius" not in dict(fixed.named_parameters()) and "log_radius" in fixed.state_dict()
    assert torch.equal(fixed(h).energy, torch.zeros(8))
    learnable = SphereHead(IN, D, K, radius_mode="learnable", radius=4.0)
    assert "log_radius" in dict(learnable.named_parameters())
    assert torch.equal(learnable(h).energy, torch.zeros(8))
    penalised = SphereHead(IN, D, K, radius_mode="penalised", radius=4.0)
    out = penalised(h)
    torch.testing.assert_close(out.energy, torch.full((8,), 16.0))
    torch.testing.assert_close(out.logits, 4.0 * penalised.classifier(out.latents))
    with pytest.raises(ValueError, match="radius_mode"):
        SphereHead(IN, D, K, radius_mode="free")
    with pytest.raises(ValueError, match="latent_dim >= 2"):
        SphereHead(IN, 1, K)


def test_sphere_within_class_energies():
    torch.manual_seed(0)
    head = SphereHead(IN, D, K, radius_mode="fixed", within_class=2.0)
    out = head(torch.randn(20, IN))
    cosines = head.classifier(out.latents)
    predicted = cosines.argmax(dim=1)
    labelled = head.within_class_energy(out.latents, predicted)
    torch.testing.assert_close(out.energy, 2.0 * labelled)
    torch.testing.assert_close(labelled, 0.5 * (out.latents - head.classifier.weight[predicted]).pow(2).sum(-1))


# --------------------------------------------------------------------------------------------------
# Stiefel
# --------------------------------------------------------------------------------------------------


def test_stiefel_starts_on_the_manifold_with_lipschitz_one():
    torch.manual_seed(0)
    head = StiefelHead(32, 8, K)
    assert head.manifold is None and isinstance(head.weight_manifold, geoopt.EuclideanStiefel)
    assert manifold_violation(head.weight_manifold, head.projection.weight) <= 1e-6
    assert abs(head.lipschitz_constant() - 1.0) <= 1e-6
    h1, h2 = torch.randn(50, 32), torch.randn(50, 32)
    dz = head.projection(h1) - head.projection(h2)
    assert bool((dz.norm(dim=1) <= (h1 - h2).norm(dim=1) * (1 + 1e-6)).all())
    with pytest.raises(ValueError, match="latent_dim <= in_dim"):
        StiefelHead(4, 8, K)


# --------------------------------------------------------------------------------------------------
# Dispatch, names and checks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifold", "expected"),
    [
        (geoopt.Sphere(), SphereHead),
        (geoopt.SphereExact(), SphereHead),
        (geoopt.PoincareBall(c=0.3), PoincareHead),
        (geoopt.PoincareBallExact(c=2.0, learnable=True), PoincareHead),
        (geoopt.Stereographic(k=-1.5), PoincareHead),
        (geoopt.EuclideanStiefel(), StiefelHead),
        (geoopt.EuclideanStiefelExact(), StiefelHead),
        (geoopt.CanonicalStiefel(), StiefelHead),
    ],
)
def test_manifold_head_dispatch(manifold, expected):
    head = ManifoldHead(IN, D, K, manifold=manifold)
    assert type(head) is expected and isinstance(head, ManifoldHead)
    if expected is not StiefelHead:
        assert head.manifold is manifold
    positional = ManifoldHead(IN, D, K, manifold)
    assert type(positional) is expected


@pytest.mark.parametrize(
    "manifold",
    [
        geoopt.Euclidean(),
        geoopt.Lorentz(),
        geoopt.SphereProjection(),
        geoopt.Stereographic(k=-1.0, learnable=True),
        geoopt.Stereographic(k=0.5),
        geoopt.Sphere(intersection=torch.eye(4)[:, :2]),
        geoopt.Sphere,
        None,
    ],
)
def test_unsupported_manifolds_are_refused_with_the_supported_list(manifold):
    with pytest.raises(ValueError, match="unsupported manifold") as info:
        ManifoldHead(IN, D, K, manifold=manifold)
    for name in ("Sphere", "PoincareBall", "Stereographic", "Stiefel"):
        assert name in str(info.value)


def test_build_geometry_head_by_name():
    assert type(build_geometry_head("sphere", IN, D, K)) is SphereHead
    head = build_geometry_head("Poincare", IN, D, K, c=0.5, classifier="prototype")
    assert type(head) is PoincareHead and float(head.c.detach()) == pytest.approx(0.5)
    assert type(build_geometry_head("stiefel", IN, D, K, bias=False)) is StiefelHead
    with pytest.raises(ValueError, match=r"lpc_geom\.models\.heads"):
        build_geometry_head("euclidean", IN, D, K)
    with pytest.raises(ValueError, match="accepted geometries: euclidean, sphere, poincare, stiefel"):
        build_geometry_head("lorentz", IN, D, K)


def test_check_on_manifold_names_the_parameter_that_left():
    torch.manual_seed(0)
    sphere = Classifier(TinyBackbone(IN, IN), SphereHead(IN, D, K))
    with torch.no_grad():
        sphere.head.classifier.weight.mul_(1.01)
    with pytest.raises(ManifoldConstraintError, match=r"'head\.classifier\.weight'.*Sphere"):
        check_on_manifold(sphere)

    ball = PoincareHead(IN, D, K, c=4.0)
    with torch.no_grad():
        ball.classifier.offsets.points[1] = torch.full((D,), 1.0)  # sqrt(c)*||p|| = 2*sqrt(6) > 1
    with pytest.raises(ManifoldConstraintError, match=r"'classifier\.offsets\.points'"):
        check_on_manifold(ball)

    stiefel = StiefelHead(IN, D, K)
    with torch.no_grad():
        stiefel.projection.weight[0, 0] += 1e-3
    with pytest.raises(ManifoldConstraintError, match=r"'projection\.weight'.*W|violation"):
        check_on_manifold(stiefel)

    nan = StiefelHead(IN, D, K)
    with torch.no_grad():
        nan.classifier.weight[0, 0] = float("nan")
    with pytest.raises(ManifoldConstraintError, match=r"'classifier\.weight' has NaN"):
        check_on_manifold(nan)


def test_dtype_conversion_reprojects_only_what_left():
    torch.manual_seed(0)
    head = StiefelHead(IN, D, K)
    before = head.projection.weight.detach().clone()
    head.to(torch.float32)  # a no-op conversion leaves points bit for bit
    assert torch.equal(head.projection.weight, before)
    head.double()
    assert manifold_violation(head.weight_manifold, head.projection.weight) <= 1e-12


# --------------------------------------------------------------------------------------------------
# Numerical safety: float32 training over a fast-growing gamma schedule
# --------------------------------------------------------------------------------------------------

SAFETY_CONFIGS = {
    "sphere": ("sphere", {"within_class": 1.0}),
    "poincare-mlr": ("poincare", {}),
    "poincare-mlr-learnable-c": ("poincare", {"c": 0.5, "learnable_c": True}),
    "poincare-prototype-manifold-learnable-c": (
        "poincare",
        {"c": 2.0, "learnable_c": True, "classifier": "prototype", "class_points": "manifold"},
    ),
    "stiefel": ("stiefel", {}),
}


def _blobs(n: int = 256, dim: int = 20, classes: int = 4):
    g = torch.Generator().manual_seed(0)
    centres = 3.0 * torch.randn(classes, dim, generator=g)
    labels = torch.arange(n) % classes
    return centres[labels] + torch.randn(n, dim, generator=g), labels


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(SAFETY_CONFIGS))
def test_float32_training_over_the_gamma_schedule_stays_finite_and_on_manifold(config):
    geometry, options = SAFETY_CONFIGS[config]
    x, y = _blobs()
    torch.manual_seed(0)
    model = Classifier(TinyBackbone(20, 16), build_geometry_head(geometry, 16, 8, 4, **options))
    opt = build_optimizer(model, "riemannian-adam", lr=1e-2)
    gamma, warmup_accuracy = 1e-2, None
    # 40 steps to separate the classes, then gamma x1.3 per step up to 1e6 (reached after ~44 steps).
    for step in range(140):
        out = model(x)
        loss = nn.functional.cross_entropy(out.logits, y) + gamma * out.energy.mean()
        assert bool(torch.isfinite(loss)), f"step {step}, gamma {gamma:.3g}"
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 39:
            warmup_accuracy = float((out.logits.argmax(1) == y).float().mean())
        if step >= 40:
            gamma = min(gamma * 1.3, 1e6)
    assert gamma == 1e6
    assert warmup_accuracy >= 0.9
    check_on_manifold(model)
    with torch.no_grad():
        out = model(x)
    assert all(bool(torch.isfinite(t).all()) for t in out)
    assert_latents_on_manifold(model.head, out.latents)
    if geometry == "stiefel":
        assert manifold_violation(model.head.weight_manifold, model.head.projection.weight) <= 1e-5


# ------------------------------------------------------------------------------------- the head registry


def test_every_geometry_head_is_registered_once_for_names_and_manifolds():
    from lpc_geom.models.build import HEADS, head_factory
    from lpc_geom.models.geometry import GEOMETRY_HEADS, SUPPORTED_MANIFOLDS

    assert GEOMETRIES == ("euclidean", "sphere", "poincare", "stiefel")
    assert tuple(HEADS)[: len(GEOMETRIES)] == GEOMETRIES
    for name, cls in GEOMETRY_HEADS.items():
        assert cls.geometry == name and head_factory(name.upper()) == cls.from_row
        assert all(f"({cls.__name__})" in line for line in SUPPORTED_MANIFOLDS if cls.__name__ in line)
    assert len(SUPPORTED_MANIFOLDS) == 4
    with pytest.raises(ValueError, match="unknown head geometry 'lorentz'; registered: euclidean, sphere"):
        head_factory("lorentz")


def test_build_model_builds_a_geometry_head_by_name_with_its_options():
    from lpc_geom.ablation import get_row
    from lpc_geom.models.build import build_model

    model = build_model("mlp", "LPC", (8,), 3, head="poincare", head_options={"c": 0.5, "classifier": "prototype"},
                        hidden=(16,))
    assert type(model.head) is PoincareHead
    assert math.isclose(float(model.head.manifold.c), 0.5, rel_tol=1e-6)
    out = model(torch.randn(4, 8))
    assert out.logits.shape == (4, 3) and out.latents.shape == (4, get_row("LPC").latent_dim(3))
    with pytest.raises(ValueError, match=r"row NoPen has none \(use a row with one: LinPen, LPC, LPC-Narrow"):
        build_model("mlp", "NoPen", (8,), 3, head="sphere", hidden=(16,))
    with pytest.raises(ValueError, match="head_options configure a head that build_model builds"):
        build_model("mlp", "LPC", (8,), 3, head=SphereHead(16, 4, 3), head_options={"radius": 2.0}, hidden=(16,))


def test_a_declared_head_registers_itself_and_is_dispatched_to(monkeypatch):
    from lpc_geom.models import build
    from lpc_geom.models.geometry import base

    monkeypatch.setattr(base, "GEOMETRY_HEADS", dict(base.GEOMETRY_HEADS))
    monkeypatch.setattr(build, "HEADS", dict(build.HEADS))

    class LorentzHead(StiefelHead, geometry="lorentz", manifolds=(geoopt.Lorentz,),
                      supports=("geoopt.Lorentz, for this test",)):
        pass

    assert base.GEOMETRY_HEADS["lorentz"] is LorentzHead and build.HEADS["lorentz"] == LorentzHead.from_row
    assert base.head_class_for(geoopt.Lorentz()) is LorentzHead
    with pytest.raises(ValueError, match=r"geoopt.Lorentz, for this test \(LorentzHead\)"):
        ManifoldHead(IN, D, K, manifold=geoopt.Euclidean())
    with pytest.raises(ValueError, match="geometry 'sphere' is already declared"):
        class _Again(SphereHead, geometry="sphere", manifolds=(geoopt.Sphere,), supports=("again",)):
            pass
    with pytest.raises(TypeError, match="declares the manifolds it serves"):
        class _Bare(SphereHead, geometry="bare"):
            pass

    class Variant(SphereHead):  # no declaration: a variant of a registered head, not registered
        pass

    assert "variant" not in base.GEOMETRY_HEADS and Variant.geometry == "sphere"
