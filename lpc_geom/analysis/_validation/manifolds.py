"""Manifolds the analyzers accept, their curvature parameters, and the device the work runs on."""

from __future__ import annotations

import math

import torch


def _curvature_value(manifold, attr: str) -> float:
    k = getattr(manifold, attr)
    k = k.detach() if isinstance(k, torch.Tensor) else torch.as_tensor(k)
    if k.numel() != 1:
        raise ValueError(f"a {type(manifold).__name__} with per-coordinate curvature is not supported")
    return float(k.to(torch.float64))


def check_curvature(manifold) -> None:
    """Refuse a geoopt manifold whose curvature parameter is non-finite or of the wrong sign.

    geoopt stores ``PoincareBall(c)`` as ``k = -softplus(softplus^{-1}(c))``, so ``c <= 0`` or ``c = nan``
    gives ``k = nan`` (and ``c = inf`` gives ``k = -inf``) without complaint; ``SphereProjection(k)`` does
    the same for ``k <= 0``. Checked: the stereographic family (``k`` finite; ``< 0`` for a Poincaré ball,
    ``> 0`` for a projected sphere) and ``Lorentz`` (``k`` finite and ``> 0``). Other manifolds have no
    curvature parameter and pass.
    """
    import geoopt

    if isinstance(manifold, geoopt.Stereographic):
        k = _curvature_value(manifold, "k")
        if isinstance(manifold, geoopt.PoincareBall):
            ok, want, given = math.isfinite(k) and k < 0, "c > 0 and finite", f"c = {-k!r}"
        elif isinstance(manifold, geoopt.SphereProjection):
            ok, want, given = math.isfinite(k) and k > 0, "k > 0 and finite", f"k = {k!r}"
        else:
            ok, want, given = math.isfinite(k), "a finite k", f"k = {k!r}"
        if not ok:
            hint = " (geoopt turns c <= 0, k <= 0 or NaN into k = nan)" if math.isnan(k) else ""
            raise ValueError(f"manifold {type(manifold).__name__} has curvature {given}{hint}; it needs {want}")
    elif isinstance(manifold, geoopt.Lorentz):
        k = _curvature_value(manifold, "k")
        if not (math.isfinite(k) and k > 0):
            raise ValueError(f"manifold Lorentz has k = {k!r}; it needs k > 0 and finite")


def check_manifold(manifold) -> tuple[str, float]:
    """The latent geometry of a manifold accepted by the analyzers: ``(kind, k)``.

    ``kind`` is ``"euclidean"`` (``None`` or ``geoopt.Euclidean``), ``"sphere"`` (unconstrained
    ``geoopt.Sphere``) or ``"stereographic"`` (``PoincareBall``, ``SphereProjection``, ``Stereographic``
    and their ``Exact`` variants) with ``k`` the signed curvature of geoopt's model (0 otherwise).

    Raises
    ------
    TypeError
        Another kind of manifold.
    ValueError
        A Sphere restricted to a subspace, a non-scalar curvature, or a curvature refused by
        :func:`check_curvature`.
    """
    if manifold is None:
        return "euclidean", 0.0
    import geoopt  # the caller built a geoopt manifold, so the import is already paid for

    if isinstance(manifold, geoopt.Euclidean):
        if manifold.ndim not in (0, 1):
            raise ValueError(f"geoopt.Euclidean(ndim={manifold.ndim}) is not a manifold of latent vectors")
        return "euclidean", 0.0
    if isinstance(manifold, geoopt.Sphere):
        if getattr(manifold, "projector", None) is not None:
            raise ValueError("a geoopt.Sphere restricted to a subspace (intersection/complement) is not supported")
        return "sphere", 0.0
    if isinstance(manifold, geoopt.Stereographic):
        check_curvature(manifold)
        return "stereographic", _curvature_value(manifold, "k")
    raise TypeError(
        f"unsupported manifold {type(manifold).__name__}: use None (Euclidean), geoopt.Sphere, "
        "geoopt.PoincareBall, geoopt.SphereProjection or geoopt.Stereographic"
    )


def work_device(device: torch.device) -> torch.device:
    """Device the float64 computation runs on: the input's own, except MPS (no float64 there)."""
    return torch.device("cpu") if device.type == "mps" else device
