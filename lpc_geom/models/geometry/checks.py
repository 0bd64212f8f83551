r"""Checks that a model's manifold parameters are still on their manifolds (and finite).

Measured violations, per manifold of a ``geoopt.ManifoldParameter`` :math:`x`:

- sphere: :math:`\max_i |\,\|x_i\| - 1\,|` (rows are points);
- ball of curvature :math:`-c`: how far :math:`\max_i \sqrt c\,\|x_i\|` exceeds :math:`1 - \epsilon`
  (:math:`\epsilon` the dtype's machine epsilon): points must stay strictly inside;
- Stiefel: :math:`\max |x^\top x - I|`;
- any other manifold: geoopt's own ``check_point_on_manifold``.
"""

from __future__ import annotations

import geoopt
import torch
from torch import nn


class ManifoldConstraintError(RuntimeError):
    """A parameter left its manifold or stopped being finite; the message names it."""


def _default_atol(dtype: torch.dtype) -> float:
    return 1e-8 if dtype == torch.float64 else 1e-5


def manifold_violation(manifold: geoopt.Manifold, x: torch.Tensor) -> float:
    r"""How far ``x`` is from ``manifold`` (see the module docstring); 0 means exactly on it.

    For the ball the value is :math:`\max(0, \sqrt c \max_i\|x_i\| - (1 - \epsilon))`, so any positive
    value means a point on the boundary to working precision, or beyond it (geoopt's projection keeps
    float32 points at :math:`\sqrt c\|x\| \le 1 - 4\cdot10^{-3}`).

    Raises
    ------
    TypeError
        For manifolds without a measured violation (use their ``check_point_on_manifold``).
    """
    with torch.no_grad():
        if isinstance(manifold, geoopt.Sphere):
            return float((x.norm(dim=-1) - 1).abs().max())
        if isinstance(manifold, geoopt.Stereographic) and bool(manifold.k < 0):
            scaled = (-manifold.k).sqrt() * x.norm(dim=-1)
            return float((scaled.max() - (1 - torch.finfo(x.dtype).eps)).clamp_min(0))
        if isinstance(manifold, geoopt.Stiefel):
            gram = x.transpose(-1, -2) @ x
            eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
            return float((gram - eye).abs().max())
    raise TypeError(f"no measured violation for {type(manifold).__name__}")


def _off_manifold(manifold: geoopt.Manifold, x: torch.Tensor, tol: float) -> tuple[bool, str]:
    """Whether ``x`` is off ``manifold`` (ball: strictly; others: beyond ``tol``), and a description."""
    try:
        violation = manifold_violation(manifold, x)
    except TypeError:
        ok, reason = manifold.check_point_on_manifold(x.detach(), explain=True, atol=tol, rtol=tol)
        return not ok, str(reason)
    if isinstance(manifold, geoopt.Stereographic):
        return violation > 0, f"sqrt(c)*max||x|| - (1 - eps) = {violation:.3g}"
    return violation > tol, f"violation = {violation:.3g} > atol = {tol:.1g}"


def _manifold_parameters(model: nn.Module):
    for name, p in model.named_parameters():
        if isinstance(p, (geoopt.ManifoldParameter, geoopt.ManifoldTensor)) and not isinstance(
            p.manifold, geoopt.Euclidean
        ):
            yield name, p


def project_manifold_parameters(model: nn.Module, *, atol: float | None = None) -> list[str]:
    """Re-project the manifold parameters that are off their manifolds at their current precision.

    Points that pass the test of :func:`check_on_manifold` are left bit-for-bit alone (so calling this
    after ``.to(device)`` changes nothing); the others are replaced by ``manifold.projx`` of themselves.
    Typical use: a float32 model converted to float64, whose unit vectors are then only unit to float32
    accuracy (the geometry heads do this on every dtype or device conversion).

    Returns
    -------
    list of str
        Names of the parameters that were projected.
    """
    projected = []
    with torch.no_grad():
        for name, p in _manifold_parameters(model):
            tol = _default_atol(p.dtype) if atol is None else atol
            if bool(torch.isfinite(p).all()) and _off_manifold(p.manifold, p, tol)[0]:
                p.copy_(p.manifold.projx(p))
                projected.append(name)
    return projected


def check_on_manifold(model: nn.Module, *, atol: float | None = None) -> None:
    r"""Raise if any parameter of ``model`` is non-finite or a manifold parameter left its manifold.

    Parameters
    ----------
    model : nn.Module
    atol : float, optional
        Tolerance on the sphere and Stiefel violations (default 1e-5 below float64, 1e-8 in float64).
        The ball's test is strict: :math:`\sqrt c\,\|x\| < 1`.

    Raises
    ------
    ManifoldConstraintError
        Naming the first offending parameter, its manifold and the measured violation.
    """
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise ManifoldConstraintError(f"parameter {name!r} has NaN or Inf entries")
    for name, p in _manifold_parameters(model):
        tol = _default_atol(p.dtype) if atol is None else atol
        off, description = _off_manifold(p.manifold, p, tol)
        if off:
            raise ManifoldConstraintError(f"parameter {name!r} left its manifold {p.manifold!r}: {description}")
