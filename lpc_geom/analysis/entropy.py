r"""Kozachenko-Leonenko (k-nearest-neighbour) differential entropy of the latents.

Radius convention, with :math:`\rho_i` the distance from point :math:`i` to its :math:`k`-th nearest
other point among the :math:`n` points actually used, and :math:`m` the dimension of the space:

.. math::

    \hat H = \psi(n) - \psi(k) + \log V_m + \frac{m}{n} \sum_i \log \rho_i, \qquad
    \log V_m = \frac m2 \log\pi - \log\Gamma\!\left(\frac m2 + 1\right)

(:math:`V_m` the volume of the unit m-ball). Reported in nats **per dimension**, :math:`\hat H / m`.
Check: :math:`H[\mathcal N(0, s^2 I_m)] / m = \tfrac12 \log(2\pi e s^2)`. On standard Gaussians the
estimate's bias (per dimension, at fixed n and k) grows with m, so compare entropies only at equal
dimension, k and n (tests/test_analysis_closed_forms.py checks the low-dimensional cases).

Conventions:

* Subsample: at most ``max_samples`` points drawn without replacement with ``numpy.random.default_rng(seed)``;
  :math:`n` in :math:`\psi(n)` is the number used.
* Duplicates: an exact duplicate has :math:`\rho_i = 0` and :math:`\log\rho_i = -\infty`. Distances are
  floored at an explicit ``floor``; the fraction of points whose :math:`\rho_i` was below it is returned
  as ``floored`` (``entropy_floored`` in the report). The default floor is the resolution of the input,
  ``eps(input dtype) * RMS ||z||``: two stored points closer than that cannot be told apart. A floored
  estimate is a bound, not a measurement: when ``floored`` is large, read ``entropy`` as "at most this".
* Scale-free variant: :math:`\hat H / m - \log s` with :math:`s = \sqrt{\operatorname{Tr}\hat\Sigma / d}`
  the RMS per-coordinate deviation of the (chart) latents used -- the entropy of :math:`z / s`, since
  :math:`H(aZ) = H(Z) + m \log a`. Invariant to scaling; a Gaussian gives
  :math:`\tfrac12\log(2\pi e) \approx 1.419`, collapsed latents give much less.
* Manifolds: :math:`\rho_i` is the geodesic distance (normalised units, see
  :mod:`lpc_geom.analysis.geometry`), found by chunked brute force; :math:`m` is the intrinsic dimension
  (:math:`d - 1` on the sphere). The volume of a geodesic ball is approximated by the Euclidean
  :math:`V_m \rho^m`; the relative error is :math:`O(|K| \rho^2)` for curvature :math:`K` (geodesic balls
  are smaller on the sphere, larger in hyperbolic space), negligible when the k-NN radii are small
  against the curvature radius, and the estimate is then the entropy with respect to the Riemannian
  volume. Euclidean latents use ``scipy.spatial.cKDTree`` for ``d <= 16`` and the same brute force above.
  Both give the exact k-th distances (up to the rounding of the distance itself): the brute force bounds
  the rounding of its (float32 or float64) Gram-identity distances and measures from direct differences
  every candidate those bounds leave ambiguous, so tight classes far from the global mean (collapsed
  latents) are not mis-ranked (:func:`~lpc_geom.analysis.geometry.kth_neighbour_distance`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from scipy.special import digamma, gammaln

from lpc_geom.analysis._validation import UndefinedMetricError, check_entropy_options, check_latents
from lpc_geom.analysis.geometry import Geometry, geometry_from_manifold, kth_neighbour_distance

__all__ = ["EntropyEstimate", "kl_entropy", "log_unit_ball_volume"]


class EntropyEstimate(NamedTuple):
    """Result of :func:`kl_entropy`.

    Attributes
    ----------
    entropy : float
        Nats per (intrinsic) dimension.
    floored : float
        Fraction of the points used whose k-th neighbour distance was below ``floor``; in [0, 1].
    scale_free : float
        ``entropy - log(scale)``; NaN when ``scale == 0`` (all points identical).
    scale : float
        RMS per-coordinate deviation of the points used.
    floor : float
        The distance floor applied.
    n_used, k, dim : int
        Points used, neighbour order, intrinsic dimension.
    """

    entropy: float
    floored: float
    scale_free: float
    scale: float
    floor: float
    n_used: int
    k: int
    dim: int


def log_unit_ball_volume(m: int) -> float:
    r""":math:`\log V_m = \frac m2\log\pi - \log\Gamma(m/2 + 1)`."""
    return 0.5 * m * math.log(math.pi) - float(gammaln(0.5 * m + 1.0))


def entropy_from_arrays(
    geom: Geometry,
    z: torch.Tensor,
    eps: float,
    *,
    k: int = 20,
    max_samples: int = 5000,
    seed: int = 0,
    floor: float | None = None,
) -> EntropyEstimate:
    """:func:`kl_entropy` on validated latents (float64, or float32 converted after subsampling) and options
    (points already checked to lie on the manifold; the options by :func:`check_entropy_options`)."""
    n = z.shape[0]
    if n > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=int(max_samples), replace=False))
        z = z[torch.from_numpy(idx).to(z.device)]
    z = z.to(torch.float64)
    n_used = z.shape[0]
    if n_used <= k:
        raise UndefinedMetricError(
            f"the k-NN entropy with k = {k} needs more than k points; got {n_used} (pass a smaller k)"
        )
    m = geom.intrinsic_dim(z.shape[1])
    if floor is None:
        rms = float((z * z).sum(1).mean().sqrt())
        floor = eps * (rms if rms > 0 else 1.0)
    rho = kth_neighbour_distance(geom, z, int(k))
    hit = rho < floor
    log_rho = torch.log(rho.clamp_min(floor))
    h = float(digamma(n_used) - digamma(k)) + log_unit_ball_volume(m) + m * float(log_rho.mean())
    per_dim = h / m
    u = geom.to_chart(z)
    scale = float(((u - u.mean(0)) ** 2).sum(1).mean().div(u.shape[1]).sqrt())
    scale_free = per_dim - math.log(scale) if scale > 0 else float("nan")
    return EntropyEstimate(per_dim, float(hit.double().mean()), scale_free, scale, float(floor), n_used, int(k), m)


def kl_entropy(
    latents,
    *,
    manifold=None,
    k: int = 20,
    max_samples: int = 5000,
    seed: int = 0,
    floor: float | None = None,
) -> EntropyEstimate:
    r"""Kozachenko-Leonenko entropy in nats per dimension (see the module docstring for every convention).

    Parameters
    ----------
    latents : array or tensor, shape (N, d)
    manifold : geoopt manifold or None
    k : int
        Neighbour order (default 20); needs more than ``k`` points.
    max_samples : int
        Seeded subsample size cap (default 5,000).
    seed : int
        Seed of the subsample.
    floor : float or None
        Distance floor; default ``eps(input dtype) * RMS ||z||``.

    Returns
    -------
    EntropyEstimate
        ``entropy`` is finite for any valid input, duplicates included. Range: any real number
        (differential entropy is unbounded below; the floor bounds it by
        :math:`\log V_m / m + \log(\mathrm{floor}) + (\psi(n) - \psi(k))/m`).
    """
    geom = geometry_from_manifold(manifold)
    k, max_samples, seed, floor = check_entropy_options(
        k, max_samples, seed, floor, max_samples_name="max_samples", floor_name="floor"
    )
    z, eps = check_latents(latents)
    z = geom.check_points(z, eps)
    return entropy_from_arrays(geom, z, eps, k=k, max_samples=max_samples, seed=seed, floor=floor)


def entropy_group(ctx, out) -> None:
    """The ``entropy`` group of :func:`~lpc_geom.analysis.analyze` (in memory only)."""
    if not ctx.in_memory:
        return
    o, s = ctx.options, ctx.stats

    def run():
        return entropy_from_arrays(
            s.geometry, s.latents, s.eps, k=o.k, max_samples=o.max_entropy_samples, seed=o.seed, floor=o.entropy_floor
        )

    try:
        est = ctx.cached("entropy", run)
    except UndefinedMetricError as err:
        for key in ("entropy", "entropy_floored", "entropy_scale_free"):
            out.undefine(key, str(err))
        return
    out.put("entropy", est.entropy)
    out.put("entropy_floored", est.floored)
    if est.scale > 0:
        out.put("entropy_scale_free", est.scale_free)
    else:
        out.undefine("entropy_scale_free", "all latents used are identical (zero spread to divide by)")
