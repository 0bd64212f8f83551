"""Geometry heads pinned where mutation testing found the other tests blind: each head's refusals (whole
messages), its defaults and initial distributions, the numerical floors of the ball and sphere maps at
their boundaries, and the checks on a manifold without a measured violation (geoopt's own check)."""

from __future__ import annotations

import math
import re

import geoopt
import pytest
import torch

from lpc_geom.ablation import get_row
from lpc_geom.models.geometry import (
    HyperbolicMLR,
    HyperbolicPrototypes,
    ManifoldConstraintError,
    ManifoldHead,
    PoincareHead,
    SphereClassifier,
    SphereHead,
    StiefelHead,
    StiefelLinear,
    build_geometry_head,
    check_on_manifold,
    expmap0,
    manifold_violation,
    mobius_add,
    random_stiefel,
    sphere_normalize,
    supported_manifolds,
)
from lpc_geom.models.geometry.base import head_class_for
from lpc_geom.models.geometry.checks import project_manifold_parameters

IN, D, K = 12, 6, 5


def exactly(message: str) -> str:
    """A ``match=`` pattern that accepts only this whole message."""
    return f"^{re.escape(message)}$"


def _holder(**params) -> torch.nn.Module:
    m = torch.nn.Module()
    for name, p in params.items():
        m.register_parameter(name, p)
    return m


# ------------------------------------------------------------------------------------ dispatch and base


SUPPORTED = (
    "geoopt.Sphere / geoopt.SphereExact without a subspace constraint (SphereHead)",
    "geoopt.PoincareBall / geoopt.PoincareBallExact with any c, fixed or learnable (PoincareHead)",
    "geoopt.Stereographic / geoopt.StereographicExact with a fixed k < 0 (PoincareHead)",
    "geoopt.EuclideanStiefel / geoopt.CanonicalStiefel / geoopt.EuclideanStiefelExact (StiefelHead)",
)


def _refusal(manifold, why: str) -> str:
    listing = "\n  - ".join(SUPPORTED)
    return f"unsupported manifold {manifold!r}: {why}. Supported manifolds:\n  - {listing}"


def test_supported_manifolds_in_declaration_order():
    assert supported_manifolds() == SUPPORTED


@pytest.mark.parametrize(
    ("manifold", "why"),
    [
        (None, "a manifold is required (pass manifold=geoopt.PoincareBall(), ...)"),
        (geoopt.Sphere, "pass an instance, e.g. Sphere(), not the class"),
        (geoopt.Euclidean(), "Euclidean latents are the reference LPC head, built by lpc_geom.models.heads "
                             "(geometry 'euclidean'); ManifoldHead only builds curved or constrained heads"),
        (geoopt.Lorentz(), "no head is defined for Lorentz"),
        (geoopt.SphereProjection(), "positive-curvature stereographic models have no head"),
        (geoopt.Stereographic(k=-1.0, learnable=True),
         "a learnable Stereographic k may change sign; use geoopt.PoincareBall(c, learnable=True)"),
        (geoopt.Stereographic(k=0.5), "Stereographic with k = 0.5 >= 0"),
        (geoopt.Stereographic(k=0.0), "Stereographic with k = 0.0 >= 0"),
        (geoopt.Sphere(intersection=torch.eye(4)[:, :2]),
         "a Sphere restricted to a subspace (intersection/complement)"),
    ],
)
def test_every_refusal_names_its_reason_and_lists_the_supported_manifolds(manifold, why):
    with pytest.raises(ValueError, match=exactly(_refusal(manifold, why))):
        head_class_for(manifold)


def test_the_base_class_without_a_manifold_refuses_instead_of_reading_past_its_arguments():
    with pytest.raises(ValueError, match=exactly(_refusal(None, "a manifold is required (pass "
                                                              "manifold=geoopt.PoincareBall(), ...)"))):
        ManifoldHead(IN, D, K)
    assert type(ManifoldHead(IN, D, K, geoopt.PoincareBall())) is PoincareHead  # the 4th positional


def test_a_declaration_needs_both_manifolds_and_supports_and_may_not_take_euclidean(monkeypatch):
    from lpc_geom.models import build
    from lpc_geom.models.geometry import base

    monkeypatch.setattr(base, "GEOMETRY_HEADS", dict(base.GEOMETRY_HEADS))
    monkeypatch.setattr(build, "HEADS", dict(build.HEADS))
    message = ("_Half: a geometry head declares the manifolds it serves and their descriptions "
               "(manifolds=..., supports=...)")
    with pytest.raises(TypeError, match=exactly(message)):
        class _Half(SphereHead, geometry="half", manifolds=(geoopt.Lorentz,)):
            pass
    with pytest.raises(TypeError, match=exactly(message)):
        class _Half(SphereHead, geometry="half", supports=("only words",)):
            pass
    with pytest.raises(ValueError, match=exactly("_Flat: geometry 'Euclidean' is already declared "
                                                 "(declared: euclidean, sphere, poincare, stiefel)")):
        class _Flat(SphereHead, geometry="Euclidean", manifolds=(geoopt.Lorentz,), supports=("x",)):
            pass
    assert "half" not in base.GEOMETRY_HEADS and "euclidean" not in base.GEOMETRY_HEADS

    class Lorentzian(StiefelHead, geometry="Lorentzian", manifolds=[geoopt.Lorentz], supports=["L"]):
        pass

    # the name is stored lower-case, the declarations as tuples
    assert Lorentzian.geometry == "lorentzian" and base.GEOMETRY_HEADS["lorentzian"] is Lorentzian
    assert Lorentzian.manifolds == (geoopt.Lorentz,) and Lorentzian.supports == ("L",)
    assert build.HEADS["lorentzian"] == Lorentzian.from_row


def test_from_row_takes_the_rows_latent_dim_unless_given():
    row = get_row("LPC")
    head = SphereHead.from_row(row, IN, K)
    assert head.projection.out_features == row.latent_dim(K)
    assert StiefelHead.from_row(row, IN, K, latent_dim=3).projection.weight.shape == (IN, 3)
    ball = PoincareHead.from_row(row, IN, K, latent_dim=4, c=0.5, classifier="prototype")
    assert ball.projection.out_features == 4 and isinstance(ball.classifier, HyperbolicPrototypes)


def test_conversions_return_the_head_and_reach_every_submodule():
    head = StiefelHead(IN, D, K)
    assert head.double() is head
    assert all(p.dtype == torch.float64 for p in head.parameters())


def test_reprs_name_the_geometry_and_the_options():
    assert SphereHead(IN, D, K).extra_repr() == ("geometry='sphere', radius_mode='penalised', within_class=0.0, "
                                                 "eps=1e-06")
    assert PoincareHead(IN, D, K).extra_repr() == "geometry='poincare', class_points='manifold'"
    assert StiefelHead(IN, D, K).extra_repr() == "geometry='stiefel'"


# ------------------------------------------------------------------------------------------------ checks


def _lorentz_point(delta: float) -> torch.Tensor:
    """A point of R^3 whose Minkowski form -x0^2 + x1^2 + x2^2 is -(1 + delta) (on the hyperboloid at 0)."""
    return torch.tensor([[math.sqrt(1.0 + delta), 0.0, 0.0]], dtype=torch.float64)


def test_a_manifold_without_a_measured_violation_uses_geoopts_check_with_the_tolerance():
    lorentz = geoopt.Lorentz().double()  # its k must match the point's dtype
    with pytest.raises(TypeError, match=exactly("no measured violation for Lorentz")):
        manifold_violation(lorentz, _lorentz_point(0.0))
    # float64 default: atol = rtol = 1e-8, i.e. |form + 1| <= 2e-8 passes
    check_on_manifold(_holder(p=geoopt.ManifoldParameter(_lorentz_point(1e-8), manifold=lorentz)))
    off = _holder(p=geoopt.ManifoldParameter(_lorentz_point(3e-8), manifold=lorentz))
    with pytest.raises(ManifoldConstraintError, match=exactly(
            "parameter 'p' left its manifold Lorentz manifold: "
            "'x' minkowski quadratic form is not equal to -1.0")):
        check_on_manifold(off)
    check_on_manifold(off, atol=1e-7)
    assert project_manifold_parameters(off, atol=1e-7) == []
    assert project_manifold_parameters(off) == ["p"]
    check_on_manifold(off)  # projected back onto the hyperboloid


def test_the_sphere_and_stiefel_tolerances_are_strict_inequalities():
    x = torch.tensor([[1.5, 0.0]], dtype=torch.float64)  # violation exactly 0.5
    assert manifold_violation(geoopt.Sphere(), x) == 0.5
    check_on_manifold(_holder(w=geoopt.ManifoldParameter(x, manifold=geoopt.Sphere())), atol=0.5)
    with pytest.raises(ManifoldConstraintError, match=exactly(
            "parameter 'w' left its manifold Sphere manifold: violation = 0.5 > atol = 0.4")):
        check_on_manifold(_holder(w=geoopt.ManifoldParameter(x, manifold=geoopt.Sphere())), atol=0.4)


def test_a_zero_curvature_stereographic_parameter_has_no_measured_violation():
    flat = geoopt.Stereographic(k=0.0)
    with pytest.raises(TypeError, match=exactly("no measured violation for Stereographic")):
        manifold_violation(flat, torch.ones(1, 2))


def test_the_stiefel_violation_in_float32_and_the_ball_message():
    W = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0]])  # W^T W = diag(1, 0.25)
    assert manifold_violation(geoopt.Stiefel(), W) == 0.75
    ball = geoopt.PoincareBall(c=4.0)
    p = geoopt.ManifoldParameter(torch.tensor([[0.75, 0.0]], dtype=torch.float64), manifold=ball)
    with pytest.raises(ManifoldConstraintError, match=r"^parameter 'p' left its manifold .*: "
                                                      r"sqrt\(c\)\*max\|\|x\|\| - \(1 - eps\) = 0\.5$"):
        check_on_manifold(_holder(p=p))


# ------------------------------------------------------------------------------------------------ sphere


def test_sphere_normalize_boundary_and_default_floor():
    eps = 2.0**-10  # a power of two: the norm of (0, eps) is exactly eps
    v = torch.tensor([[0.0, eps], [0.0, eps / 2]], dtype=torch.float64)
    assert torch.equal(sphere_normalize(v, eps), torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    small = torch.tensor([[0.0, 3e-4, 4e-4]], dtype=torch.float64)  # norm 5e-4, above the default 1e-6
    torch.testing.assert_close(sphere_normalize(small), small / 5e-4, rtol=1e-15, atol=0)
    below = torch.tensor([[0.0, 6e-7, 8e-7]], dtype=torch.float64)  # norm 1e-6 - 1e-12 rounding: e1
    below = below * (1 - 1e-9)
    assert torch.equal(sphere_normalize(below), torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))


def test_sphere_classifier_directions_are_unit_rows_on_a_sphere_by_default():
    torch.manual_seed(0)
    clf = SphereClassifier(D, K)
    assert isinstance(clf.weight, geoopt.ManifoldParameter) and isinstance(clf.weight.manifold, geoopt.Sphere)
    assert clf.weight.shape == (K, D)
    torch.testing.assert_close(clf.weight.norm(dim=1), torch.ones(K))
    u = sphere_normalize(torch.randn(3, D))
    torch.testing.assert_close(clf(u), u @ clf.weight.detach().t())
    exact = geoopt.SphereExact()
    assert SphereClassifier(D, K, manifold=exact).weight.manifold is exact


def test_sphere_head_refusals_and_their_boundaries():
    SphereHead(IN, 2, K)  # S^1 is allowed
    with pytest.raises(ValueError, match=exactly("the sphere head needs latent_dim >= 2 (S^0 is two points), "
                                                 "got 1")):
        SphereHead(IN, 1, K)
    with pytest.raises(ValueError, match=exactly("radius_mode must be one of ('fixed', 'learnable', "
                                                 "'penalised'), got 'free'")):
        SphereHead(IN, D, K, radius_mode="free")
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=exactly(f"radius must be positive, got {bad}")):
            SphereHead(IN, D, K, radius=bad)
    with pytest.raises(ValueError, match=exactly("within_class must be >= 0, got -0.5")):
        SphereHead(IN, D, K, within_class=-0.5)
    ball = geoopt.PoincareBall()
    with pytest.raises(ValueError, match=exactly(f"SphereHead needs a geoopt.Sphere, got {ball!r}")):
        SphereHead(IN, D, K, manifold=ball)


def test_sphere_head_defaults():
    head = SphereHead(IN, D, K)
    assert head.radius_mode == "penalised" and head.within_class == 0.0 and head.eps == 1e-6
    assert float(head.radius.detach()) == pytest.approx(16.0, rel=1e-6)
    assert head.projection.bias is None and isinstance(head.manifold, geoopt.Sphere)
    assert head.classifier.weight.manifold is head.manifold
    torch.manual_seed(0)
    out = head(torch.randn(4, IN))
    torch.testing.assert_close(out.energy, torch.full((4,), 256.0), rtol=1e-5, atol=0)
    assert SphereHead(IN, D, K, bias=True).projection.bias is not None


def test_sphere_within_class_term_with_a_weight_below_one():
    torch.manual_seed(0)
    head = SphereHead(IN, D, K, radius_mode="learnable", radius=3.0, within_class=0.25)
    out = head(torch.randn(7, IN))
    cosines = out.latents @ head.classifier.weight.detach().t()
    torch.testing.assert_close(out.energy, 0.25 * (1.0 - cosines.max(dim=1).values))
    torch.testing.assert_close(out.logits, 3.0 * cosines)


# ---------------------------------------------------------------------------------------------- poincare


@pytest.mark.parametrize("c", [0.5, 2.0])
def test_expmap0_near_the_origin_is_the_identity_to_first_order(c):
    v = torch.tensor([[3e-4, -4e-4], [0.0, 0.0]], dtype=torch.float64)
    x = expmap0(v, torch.tensor(c, dtype=torch.float64))
    r = math.sqrt(c) * 5e-4
    torch.testing.assert_close(x[0], v[0] * math.tanh(r) / r, rtol=1e-14, atol=0)
    assert torch.equal(x[1], torch.zeros(2, dtype=torch.float64))


def test_mobius_add_against_the_closed_form():
    # (2, 1, 3) against (1, 3, 3): every reduction must run over the last axis of the broadcast pair.
    cc = 0.7
    c = torch.tensor(cc, dtype=torch.float64)
    x = torch.tensor([[[0.3, -0.2, 0.1]], [[-0.25, 0.05, 0.4]]], dtype=torch.float64)
    y = torch.tensor([[[-0.1, 0.4, 0.25], [0.2, 0.1, -0.3], [0.05, -0.45, 0.1]]], dtype=torch.float64)
    expected = torch.empty(2, 3, 3, dtype=torch.float64)
    for i in range(2):
        for j in range(3):
            xi, yj = x[i, 0], y[0, j]
            xy, x2, y2 = float(xi @ yj), float(xi @ xi), float(yj @ yj)
            num = (1 + 2 * cc * xy + cc * y2) * xi + (1 - cc * x2) * yj
            expected[i, j] = num / (1 + 2 * cc * xy + cc * cc * x2 * y2)
    torch.testing.assert_close(mobius_add(x, y, c), expected, rtol=1e-14, atol=1e-16)
    torch.testing.assert_close(mobius_add(x, -x, c), torch.zeros(2, 1, 3, dtype=torch.float64), rtol=0,
                               atol=1e-16)


def test_poincare_head_defaults_and_class_points():
    head = PoincareHead(IN, D, K)
    assert isinstance(head.manifold, geoopt.PoincareBall) and float(head.c) == 1.0
    assert not any(p.requires_grad for p in head.manifold.parameters())
    assert head.class_points == "manifold" and isinstance(head.classifier, HyperbolicMLR)
    assert isinstance(head.classifier.offsets.points, geoopt.ManifoldParameter)
    assert head.projection.bias is not None
    assert PoincareHead(IN, D, K, bias=False).projection.bias is None
    learnable = PoincareHead(IN, D, K, learnable_c=True)
    assert learnable.class_points == "tangent" and float(learnable.c.detach()) == pytest.approx(1.0, rel=1e-6)
    assert hasattr(learnable.classifier.offsets, "tangent_points")
    fixed = PoincareHead(IN, D, K, manifold=geoopt.PoincareBall(c=0.3), class_points="tangent")
    assert fixed.class_points == "tangent" and not hasattr(fixed.classifier.offsets, "points")


def test_poincare_head_refusals():
    conflict = "give either a manifold or c / learnable_c, not both"
    with pytest.raises(ValueError, match=exactly(conflict)):
        PoincareHead(IN, D, K, manifold=geoopt.PoincareBall(), learnable_c=False)
    with pytest.raises(ValueError, match=exactly(conflict)):
        PoincareHead(IN, D, K, manifold=geoopt.PoincareBall(), c=1.0)
    for bad in (geoopt.Sphere(), geoopt.Stereographic(k=0.5), geoopt.Stereographic(k=0.0)):
        with pytest.raises(ValueError, match=exactly(f"PoincareHead needs a geoopt.PoincareBall or "
                                                     f"Stereographic(k<0), got {bad!r}")):
            PoincareHead(IN, D, K, manifold=bad)
    with pytest.raises(ValueError, match=exactly("classifier must be 'mlr' or 'prototype', got 'linear'")):
        PoincareHead(IN, D, K, classifier="linear")
    with pytest.raises(ValueError, match=exactly("class_points must be 'auto', 'manifold' or 'tangent', "
                                                 "got 'both'")):
        PoincareHead(IN, D, K, class_points="both")


def test_hyperbolic_mlr_initialisation():
    torch.manual_seed(0)
    d, k = 16, 40
    mlr = HyperbolicMLR(d, k, geoopt.PoincareBall(), "manifold")
    bound = 1 / math.sqrt(d)
    largest = float(mlr.normals.detach().abs().max())
    assert 0.95 * bound < largest <= bound
    assert mlr.weight is mlr.normals
    assert torch.equal(mlr.offsets(), torch.zeros(k, d))


def test_prototypes_initialisation_temperature_and_weight():
    torch.manual_seed(0)
    d, k = 64, 50
    ball = geoopt.PoincareBall(c=1.0)
    protos = HyperbolicPrototypes(d, k, ball, "tangent", temperature=2.5)
    g = protos.prototypes.tangent_points.detach()
    assert float(g.std()) == pytest.approx(1 / (2 * math.sqrt(d)), rel=0.05)  # 3200 samples: ~1.3 % error
    assert protos.temperature == 2.5
    torch.testing.assert_close(protos.weight, ball.logmap0(protos.prototypes()), rtol=0, atol=0)
    torch.testing.assert_close(protos.weight, g, rtol=1e-5, atol=1e-6)  # log_0(exp_0(g)) = g
    z = ball.projx(0.1 * torch.randn(3, d))
    expected = -ball.dist(z[:, None, :], protos.prototypes()[None]) ** 2 / 2.5
    torch.testing.assert_close(protos(z), expected, rtol=1e-4, atol=1e-5)
    assert HyperbolicPrototypes(d, k, ball, "tangent").temperature == 1.0
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=exactly(f"temperature must be positive, got {bad}")):
            HyperbolicPrototypes(d, k, ball, "tangent", temperature=bad)


def test_prototypes_on_the_manifold_start_at_the_exponential_of_the_tangent_draw():
    ball = geoopt.PoincareBall(c=2.0)
    torch.manual_seed(3)
    tangent = HyperbolicPrototypes(D, K, ball, "tangent")
    torch.manual_seed(3)
    manifold = HyperbolicPrototypes(D, K, ball, "manifold")
    assert isinstance(manifold.prototypes.points, geoopt.ManifoldParameter)
    assert manifold.prototypes.points.manifold is ball
    torch.testing.assert_close(manifold.prototypes(), tangent.prototypes(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(tangent.prototypes(), expmap0(tangent.prototypes.tangent_points, -ball.k))


# ----------------------------------------------------------------------------------------------- stiefel


def test_random_stiefel_is_the_sign_corrected_q_of_the_gaussian():
    torch.manual_seed(7)
    a = torch.randn(9, 4, dtype=torch.float64)
    torch.manual_seed(7)
    q = random_stiefel(9, 4, dtype=torch.float64)
    assert q.dtype == torch.float64 and q.shape == (9, 4)
    torch.testing.assert_close(q.t() @ q, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-14)
    r = q.t() @ a  # R of the QR factorisation with a positive diagonal
    torch.testing.assert_close(r, torch.triu(r), rtol=0, atol=1e-12)
    assert bool((torch.diagonal(r) > 0).all())
    assert random_stiefel(4, 4).shape == (4, 4)
    with pytest.raises(ValueError, match=exactly("St(n, p) needs p <= n, got n=3, p=4")):
        random_stiefel(3, 4)


def test_random_stiefel_keeps_a_column_whose_r_diagonal_is_zero(monkeypatch):
    # A Gaussian draw has a zero diagonal in R with probability 0; a rank-deficient draw forces one.
    def draw(n, p, dtype=None):
        a = torch.arange(1.0, n * p + 1, dtype=dtype).reshape(n, p)
        a[:, 1] = 2 * a[:, 0]
        return a

    monkeypatch.setattr(torch, "randn", draw)
    q = random_stiefel(5, 3, dtype=torch.float64)
    _, r = torch.linalg.qr(draw(5, 3, dtype=torch.float64))
    assert float(r[1, 1].abs()) < 1e-12  # the case under test
    assert float(q[:, 1].norm()) == pytest.approx(1.0, abs=1e-12)


def test_stiefel_linear_is_h_w_plus_b():
    torch.manual_seed(0)
    layer = StiefelLinear(6, 6)  # square is allowed
    assert isinstance(layer.weight.manifold, geoopt.EuclideanStiefel)
    assert torch.equal(layer.bias.detach(), torch.zeros(6))
    with torch.no_grad():
        layer.bias.copy_(torch.arange(6.0))
    h = torch.randn(3, 6)
    torch.testing.assert_close(layer(h), h @ layer.weight.detach() + torch.arange(6.0))
    plain = StiefelLinear(6, 2, bias=False)
    assert plain.bias is None
    torch.testing.assert_close(plain(h), h @ plain.weight.detach())
    canonical = geoopt.CanonicalStiefel()
    assert StiefelLinear(6, 2, canonical).weight.manifold is canonical
    with pytest.raises(ValueError, match=exactly("a Stiefel projection needs latent_dim <= in_dim (orthonormal "
                                                 "columns), got in_dim=2, latent_dim=3")):
        StiefelLinear(2, 3)


def test_stiefel_head_output_defaults_and_refusal():
    torch.manual_seed(0)
    head = StiefelHead(IN, D, K)
    assert head.classifier.bias is None and head.projection.bias is not None
    assert StiefelHead(IN, D, K, classifier_bias=True).classifier.bias is not None
    assert StiefelHead(IN, D, K, bias=False).projection.bias is None
    with torch.no_grad():
        head.projection.bias.copy_(torch.linspace(-1, 1, D))
    h = torch.randn(5, IN)
    out = head(h)
    z = h @ head.projection.weight.detach() + torch.linspace(-1, 1, D)
    torch.testing.assert_close(out.latents, z)
    torch.testing.assert_close(out.energy, (z * z).sum(dim=1))
    torch.testing.assert_close(out.logits, z @ head.classifier.weight.detach().t())
    assert head.lipschitz_constant() == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        head.projection.weight.mul_(3.0)
    assert head.lipschitz_constant() == pytest.approx(3.0, rel=1e-5)
    sphere = geoopt.Sphere()
    with pytest.raises(ValueError, match=exactly(f"StiefelHead needs a geoopt Stiefel manifold, got {sphere!r}")):
        StiefelHead(IN, D, K, manifold=sphere)


def test_build_geometry_head_messages_whole():
    with pytest.raises(ValueError, match=exactly("geometry 'euclidean' is the reference LPC head, built by "
                                                 "lpc_geom.models.heads; build_geometry_head builds sphere, "
                                                 "poincare, stiefel")):
        build_geometry_head("Euclidean", IN, D, K)
    with pytest.raises(ValueError, match=exactly("unknown geometry 'Lorentz'; accepted geometries: euclidean, "
                                                 "sphere, poincare, stiefel")):
        build_geometry_head("Lorentz", IN, D, K)
    head = build_geometry_head("SPHERE", IN, D, K, radius=2.0, radius_mode="fixed")
    assert type(head) is SphereHead and float(head.radius.detach()) == pytest.approx(2.0)
