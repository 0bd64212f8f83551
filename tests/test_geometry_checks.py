"""Manifold checks: the measured violation per manifold against its formula, default tolerances per
dtype, the ball's strict boundary, and re-projection that leaves good points bit-for-bit alone."""

import geoopt
import pytest
import torch
from torch import nn

from lpc_geom.models.geometry import ManifoldConstraintError, check_on_manifold, manifold_violation
from lpc_geom.models.geometry.checks import project_manifold_parameters


def _holder(**params):
    m = nn.Module()
    for name, p in params.items():
        m.register_parameter(name, p)
    return m


def test_violation_formulas():
    x = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 0.5]], dtype=torch.float64)
    assert manifold_violation(geoopt.Sphere(), x) == pytest.approx(4.0)  # | ||(3,4)|| - 1 |
    ball = geoopt.PoincareBall(c=4.0)
    inside = torch.tensor([[0.1, 0.0], [0.0, 0.3]], dtype=torch.float64)
    assert manifold_violation(ball, inside) == 0.0
    outside = torch.tensor([[0.0, 0.3], [0.6, 0.0]], dtype=torch.float64)  # sqrt(4) * 0.6 = 1.2
    eps = torch.finfo(torch.float64).eps
    assert manifold_violation(ball, outside) == pytest.approx(1.2 - (1 - eps), rel=1e-12)
    W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)  # W^T W = diag(1, 4)
    assert manifold_violation(geoopt.Stiefel(), W) == pytest.approx(3.0)
    with pytest.raises(TypeError, match="no measured violation for Euclidean"):
        manifold_violation(geoopt.Euclidean(), x)


def test_ball_boundary_is_strict_at_working_precision():
    ball = geoopt.PoincareBall(c=1.0)
    for dtype in (torch.float32, torch.float64):
        eps = torch.finfo(dtype).eps
        on = torch.tensor([[1.0, 0.0]], dtype=dtype)
        assert manifold_violation(ball, on) == pytest.approx(eps, rel=1e-6)
        p = geoopt.ManifoldParameter(on.clone(), manifold=ball)
        with pytest.raises(ManifoldConstraintError, match=r"'p' left its manifold .*sqrt\(c\)\*max"):
            check_on_manifold(_holder(p=p))
        inner = geoopt.ManifoldParameter(torch.tensor([[1.0 - 4 * eps, 0.0]], dtype=dtype), manifold=ball)
        check_on_manifold(_holder(p=inner))


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-8), (torch.float32, 1e-5)])
def test_default_tolerance_depends_on_the_dtype(dtype, atol):
    sphere = geoopt.Sphere()
    for off, raises in ((0.3 * atol, False), (3 * atol, True)):
        x = torch.tensor([[1.0 + off, 0.0]], dtype=dtype)
        m = _holder(w=geoopt.ManifoldParameter(x, manifold=sphere))
        if raises:
            with pytest.raises(ManifoldConstraintError, match=r"'w' left its manifold .*violation = "):
                check_on_manifold(m)
            check_on_manifold(m, atol=10 * atol)  # an explicit tolerance overrides the default
        else:
            check_on_manifold(m)


def test_non_finite_parameters_are_named_and_euclidean_manifold_parameters_are_not_checked():
    m = _holder(a=nn.Parameter(torch.tensor([1.0, float("nan")])))
    with pytest.raises(ManifoldConstraintError, match="parameter 'a' has NaN or Inf entries"):
        check_on_manifold(m)
    far = geoopt.ManifoldParameter(torch.tensor([[5.0, 5.0]]), manifold=geoopt.Euclidean())
    check_on_manifold(_holder(e=far))
    assert project_manifold_parameters(_holder(e=far)) == []


def test_projection_only_touches_points_that_are_off():
    sphere, ball = geoopt.Sphere(), geoopt.PoincareBall(c=1.0)
    good = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    m = _holder(
        good=geoopt.ManifoldParameter(good.clone(), manifold=sphere),
        off=geoopt.ManifoldParameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64), manifold=sphere),
        out=geoopt.ManifoldParameter(torch.tensor([[2.0, 0.0]], dtype=torch.float64), manifold=ball),
        bad=geoopt.ManifoldParameter(torch.tensor([[float("nan"), 1.0]], dtype=torch.float64), manifold=sphere),
    )
    assert project_manifold_parameters(m) == ["off", "out"]
    assert torch.equal(m.good.data, good)
    torch.testing.assert_close(m.off.data, good)
    assert manifold_violation(ball, m.out.data) == 0.0
    assert torch.isnan(m.bad.data).any()  # non-finite: left for check_on_manifold to report
    # with a loose tolerance a slightly-off point is left alone
    slight = _holder(s=geoopt.ManifoldParameter(torch.tensor([[1.0 + 1e-6, 0.0]], dtype=torch.float64),
                                                manifold=sphere))
    assert project_manifold_parameters(slight, atol=1e-4) == []
    assert project_manifold_parameters(slight) == ["s"]
