r"""Geometry of the latent space: distances, class centres, norms and a vector chart.

Supported manifolds (``manifold`` argument of :func:`lpc_geom.analyze`):

* ``None`` or ``geoopt.Euclidean`` -- Euclidean space.
* ``geoopt.Sphere`` / ``SphereExact`` (unconstrained) -- the unit sphere :math:`S^{d-1}\subset\mathbb R^d`.
* ``geoopt.PoincareBall(c)``, ``SphereProjection(k)`` and ``Stereographic(k)`` (and their ``Exact``
  variants) -- the stereographic models of constant curvature; ``PoincareBall(c)`` has ``k = -c``.

Units. geoopt's stereographic models carry the conformal factor :math:`\lambda_x = 2/(1 + k\|x\|^2)`, so
at ``k -> 0`` their distance tends to *twice* the Euclidean one. Here every stereographic distance is
reported divided by :math:`\lambda_0 = 2`, i.e. in the metric :math:`(1 + k\|x\|^2)^{-2} g_E` that equals
the Euclidean metric at the origin (curvature ``4k``). With that convention the analysis of the same array
under ``PoincareBall(c)`` tends to its Euclidean analysis as ``c -> 0`` (every figure, not only the
scale-free ones). Multiply distances by 2 to get geoopt's ``dist``.

Closed forms used (:math:`\delta = \|x - y\|^2`, :math:`t = 2|k|\delta / ((1 + k\|x\|^2)(1 + k\|y\|^2))`):

* Euclidean: :math:`d(x, y) = \sqrt\delta`.
* Sphere: :math:`d(x, y) = \arccos\langle x, y\rangle = 2\arcsin(\sqrt\delta / 2)`.
* ``k < 0``: :math:`d(x, y) = \operatorname{arcosh}(1 + t) / (2\sqrt{|k|})`.
* ``k > 0``: :math:`d(x, y) = \arcsin(\sqrt{t/2}) / \sqrt{k}`.

The half-angle / ``log1p`` forms keep small distances accurate (no ``arccos(1 - tiny)``).

Chart. Moment-based figures (covariances, NC1-3, hypercube) need a vector space. Euclidean latents are
their own chart; on the sphere the chart is the ambient :math:`\mathbb R^d` (the usual extrinsic
statistics of directional data); on stereographic models it is the tangent space at the origin through
geoopt's ``logmap0`` (a radial rescaling, so sign patterns and angles at the origin are kept, and
``||logmap0(z)||`` is the normalised geodesic distance to the origin).

Class centres (:func:`class_centres`):

* Euclidean: the arithmetic mean (the Fréchet mean).
* Sphere: the extrinsic mean :math:`m_c / \|m_c\|` of the ambient mean :math:`m_c` -- the Fréchet mean
  for the chordal distance, equal to the geodesic Fréchet mean up to second order in the class spread.
  Undefined when :math:`\|m_c\| \approx 0` (directions spread all round the sphere).
* Stereographic: the tangent-space mean at the origin, ``expmap0(mean(logmap0(z)))``.

Why these rather than the geodesic Fréchet mean or the Einstein midpoint: they are closed-form sums,
so the one-pass :class:`~lpc_geom.analysis.accumulator.CollapseAccumulator` reproduces them exactly; the
stereographic centre is the mean in the chart where all moment figures are computed, so centres and
covariances agree; the origin is the distinguished point of latent point collapse (norms and the
compression energy are measured from it, and manifold heads build ``z = expmap0(v)``); and the result
tends to the arithmetic mean as ``k -> 0``. The price: the stereographic centre is equivariant under
rotations about the origin but not under hyperbolic translations, and differs from the Fréchet mean by
a term second order in the class spread (negligible for the compact classes collapse is about).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Geometry",
    "class_centres",
    "class_means",
    "distances_to_centres",
    "geometry_from_manifold",
    "kth_neighbour_distance",
    "pairwise_sqdist",
]

# Below this radius (in units of the curvature radius) the series of artanh(x)/x etc. is used.
_SERIES_CUTOFF = 1e-4
# Sphere class centre undefined when the mean resultant length is below this.
_SPHERE_MIN_RESULTANT = 1e-8


@dataclass(frozen=True)
class Geometry:
    """A latent geometry: ``kind`` in {"euclidean", "sphere", "stereographic"} and, for the latter,
    the signed curvature ``k`` of geoopt's model (``PoincareBall(c)`` has ``k = -c``)."""

    kind: str
    k: float = 0.0

    @property
    def name(self) -> str:
        if self.kind != "stereographic":
            return self.kind
        if self.k < 0:
            return f"poincare(c={-self.k:.6g})"
        return f"stereographic(k={self.k:.6g})"

    def intrinsic_dim(self, d: int) -> int:
        """Dimension of the manifold (``d - 1`` on the sphere, ``d`` otherwise)."""
        return d - 1 if self.kind == "sphere" else d

    @property
    def is_flat(self) -> bool:
        """Euclidean, or a stereographic model with ``k = 0`` (then every operation is the Euclidean one)."""
        return self.kind == "euclidean" or (self.kind == "stereographic" and self.k == 0.0)

    @property
    def has_origin(self) -> bool:
        return self.kind != "sphere"

    # -- points -------------------------------------------------------------------------------------
    def check_points(self, z: torch.Tensor, eps: float) -> torch.Tensor:
        """Check that ``z`` lies on the manifold; returns ``z`` (the sphere's rows renormalised).

        Sphere: every row norm must be within ``max(1e-5, 16 eps)`` of 1 (``eps`` of the input dtype);
        rows are then divided by their norm. Poincaré ball (``k < 0``): every row must satisfy
        :math:`|k| \\|z\\|^2 < 1`.
        """
        if self.kind == "sphere":
            norms = z.norm(dim=1)
            tol = max(1e-5, 16.0 * eps)
            bad = (norms - 1.0).abs() > tol
            if bool(bad.any()):
                worst = float(norms[bad][0])
                raise ValueError(
                    f"{int(bad.sum())} latent rows are not on the unit sphere (|norm - 1| > {tol:.1e}; "
                    f"e.g. norm {worst:.6g}); project them with manifold.projx first"
                )
            return z / norms[:, None]
        if self.kind == "stereographic" and self.k < 0:
            r2 = (z * z).sum(dim=1) * (-self.k)
            bad = r2 >= 1.0
            if bool(bad.any()):
                radius = 1.0 / math.sqrt(-self.k)
                raise ValueError(
                    f"{int(bad.sum())} latent rows lie on or outside the Poincaré ball of radius "
                    f"1/sqrt(c) = {radius:.6g} (first at row {int(torch.nonzero(bad)[0, 0])}); "
                    "pass the manifold the latents were produced on, or project them with manifold.projx"
                )
        return z

    def to_chart(self, z: torch.Tensor) -> torch.Tensor:
        """Chart coordinates: identity (Euclidean, sphere's ambient space) or ``logmap0`` (stereographic)."""
        if self.kind != "stereographic" or self.k == 0.0:
            return z  # Euclidean, flat stereographic, or the sphere's ambient chart
        x = math.sqrt(abs(self.k)) * z.norm(dim=-1, keepdim=True)
        small = x < _SERIES_CUTOFF
        xs = torch.where(small, torch.ones_like(x), x)
        if self.k < 0:
            ratio = torch.where(small, 1.0 + x * x / 3.0, torch.atanh(xs) / xs)
        else:
            ratio = torch.where(small, 1.0 - x * x / 3.0, torch.atan(xs) / xs)
        return z * ratio

    def from_chart(self, u: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_chart` (for the sphere: projection ``u / ||u||``, NaN rows where ``u ~ 0``)."""
        if self.is_flat:
            return u
        if self.kind == "sphere":
            n = u.norm(dim=-1, keepdim=True)
            out = u / n.clamp_min(1e-300)
            return torch.where(n > _SPHERE_MIN_RESULTANT, out, torch.full_like(out, float("nan")))
        x = math.sqrt(abs(self.k)) * u.norm(dim=-1, keepdim=True)
        small = x < _SERIES_CUTOFF
        xs = torch.where(small, torch.ones_like(x), x)
        if self.k < 0:
            ratio = torch.where(small, 1.0 - x * x / 3.0, torch.tanh(xs) / xs)
        else:
            ratio = torch.where(small, 1.0 + x * x / 3.0, torch.tan(xs) / xs)
        return u * ratio

    def origin_norm(self, z: torch.Tensor) -> torch.Tensor | None:
        """Geodesic distance to the origin (normalised units); ``None`` on the sphere (no origin)."""
        if self.kind == "sphere":
            return None
        return self.to_chart(z).norm(dim=-1)

    def dist_from_sqdist(self, sq: torch.Tensor, x_sq: torch.Tensor, y_sq: torch.Tensor) -> torch.Tensor:
        """Geodesic distance from the squared Euclidean distance ``sq`` and the squared norms of both ends.

        ``x_sq`` and ``y_sq`` must broadcast against ``sq`` (they are used only by stereographic models).
        """
        sq = sq.clamp_min(0.0)
        if self.is_flat:
            return sq.sqrt()
        if self.kind == "sphere":
            return 2.0 * torch.asin((sq.sqrt() * 0.5).clamp(max=1.0))
        k = self.k
        t = 2.0 * abs(k) * sq / ((1.0 + k * x_sq) * (1.0 + k * y_sq))
        if k < 0:
            return torch.log1p(t + torch.sqrt(t * (t + 2.0))) / (2.0 * math.sqrt(-k))
        return torch.asin(torch.sqrt(t * 0.5).clamp(max=1.0)) / math.sqrt(k)

    def dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Geodesic distance between matching rows of ``x`` and ``y`` (direct differences, exact)."""
        diff = x - y
        sq = torch.linalg.vector_norm(diff, dim=-1).square_()
        if self.kind != "stereographic" or self.k == 0.0:
            return self.dist_from_sqdist(sq, sq, sq)
        return self.dist_from_sqdist(sq, (x * x).sum(dim=-1), (y * y).sum(dim=-1))


def geometry_from_manifold(manifold) -> Geometry:
    """Identify a geoopt manifold (or ``None``) as a :class:`Geometry`.

    Raises
    ------
    TypeError
        A manifold other than Euclidean, unconstrained Sphere, or a stereographic model.
    ValueError
        A Sphere restricted to a subspace (``intersection``/``complement``), or a non-scalar curvature.
    """
    if manifold is None:
        return Geometry("euclidean")
    import geoopt  # the caller built a geoopt manifold, so the import is already paid for

    if isinstance(manifold, geoopt.Euclidean):
        if manifold.ndim not in (0, 1):
            raise ValueError(f"geoopt.Euclidean(ndim={manifold.ndim}) is not a manifold of latent vectors")
        return Geometry("euclidean")
    if isinstance(manifold, geoopt.Sphere):
        if getattr(manifold, "projector", None) is not None:
            raise ValueError("a geoopt.Sphere restricted to a subspace (intersection/complement) is not supported")
        return Geometry("sphere")
    if isinstance(manifold, geoopt.Stereographic):
        k = manifold.k.detach()
        if k.numel() != 1:
            raise ValueError("a stereographic manifold with per-coordinate curvature is not supported")
        return Geometry("stereographic", float(k.to(torch.float64)))
    raise TypeError(
        f"unsupported manifold {type(manifold).__name__}: use None (Euclidean), geoopt.Sphere, "
        "geoopt.PoincareBall, geoopt.SphereProjection or geoopt.Stereographic"
    )


# -- class statistics -------------------------------------------------------------------------------
def class_first_members(u: torch.Tensor, codes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(K, d) the first row of each class (the last row for an absent class): the shift of :func:`class_means`."""
    n = u.shape[0]
    first = torch.full((n_classes,), n, dtype=torch.long, device=u.device)
    first.scatter_reduce_(0, codes, torch.arange(n, device=u.device), reduce="amin")
    return u[first.clamp(max=n - 1)]


def class_means(
    u: torch.Tensor, codes: torch.Tensor, n_classes: int, *, residuals: bool = False
) -> tuple[torch.Tensor, ...]:
    """Per-class means of the rows of ``u`` (float64) and the counts; with ``residuals=True`` also
    ``u - means[codes]``.

    Each class is shifted by its first member before summing, so a class of identical points has exactly
    that point as its mean and exactly zero residuals (no rounding residue that would turn a zero distance
    into ``1e-17``).
    """
    counts = torch.bincount(codes, minlength=n_classes)
    shift = class_first_members(u, codes, n_classes)
    dev = u - shift.index_select(0, codes)
    sums = torch.zeros(n_classes, u.shape[1], dtype=u.dtype, device=u.device)
    sums.index_add_(0, codes, dev)
    offset = sums / counts.clamp_min(1)[:, None].to(u.dtype)
    means = shift + offset
    if not residuals:
        return means, counts
    return means, counts, dev.sub_(offset.index_select(0, codes))


def class_centres(geom: Geometry, chart_means: torch.Tensor) -> torch.Tensor:
    """Class centres on the manifold from the chart means (see the module docstring for the choice)."""
    return geom.from_chart(chart_means)


# -- distances --------------------------------------------------------------------------------------
def pairwise_sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (len(x), len(y)) by the Gram identity, after shifting both sets by the
    mean of ``y`` (which keeps the cancellation error at ``eps * spread^2`` rather than ``eps * norm^2``)."""
    c = y.mean(dim=0, keepdim=True)
    xs, ys = x - c, y - c
    sq = (xs * xs).sum(1, keepdim=True) + (ys * ys).sum(1)[None, :] - 2.0 * (xs @ ys.T)
    return sq.clamp_min_(0.0)


def distances_to_centres(
    geom: Geometry,
    z: torch.Tensor,
    centres: torch.Tensor,
    codes: torch.Tensor,
    chunk: int = 8192,
    own: torch.Tensor | None = None,
) -> torch.Tensor:
    """Geodesic distances (N, K) from every latent to every class centre.

    The other-class columns use the Gram identity (memory N x K, never N x N); the own-class column is
    recomputed from direct differences so that collapsed classes keep their tiny distances exactly
    (or taken from ``own`` when the caller already has them).
    """
    n = z.shape[0]
    out = torch.empty(n, centres.shape[0], dtype=z.dtype, device=z.device)
    c_sq = (centres * centres).sum(1)
    for s in range(0, n, chunk):
        zb = z[s : s + chunk]
        sq = pairwise_sqdist(zb, centres)
        out[s : s + chunk] = geom.dist_from_sqdist(sq, (zb * zb).sum(1, keepdim=True), c_sq[None, :])
    if own is None:
        own = geom.dist(z, centres.index_select(0, codes))
    out.scatter_(1, codes[:, None], own[:, None])
    return out


# Euclidean k-NN uses scipy's cKDTree up to this dimension (exact differences, fast); beyond it, and on
# manifolds, chunked brute force with an exact re-computation of the candidate neighbours.
_KDTREE_MAX_DIM = 16


def kth_neighbour_distance(geom: Geometry, z: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row of ``z`` to its ``k``-th nearest other row (geodesic, normalised units).

    Requires ``k < len(z)``. Exact duplicates give exactly 0. Memory is ``chunk x len(z)``.

    Brute force: Gram-identity distances on mean-shifted points, ``topk``; rows whose k-th squared distance
    is within a factor 1e6 of the identity's rounding error (near-duplicates) are re-measured from direct
    differences of their ``2k`` best candidates.
    """
    n, d = z.shape
    if geom.kind == "euclidean" and d <= _KDTREE_MAX_DIM:
        from scipy.spatial import cKDTree

        pts = z.cpu().numpy()
        # k + 1 because each point finds itself at distance 0.
        dist, _ = cKDTree(pts).query(pts, k=k + 1)
        return torch.from_numpy(np.ascontiguousarray(dist[:, k])).to(z.device)
    m = min(n - 1, 2 * k)
    z_sq = (z * z).sum(1)
    zs = z - z.mean(0, keepdim=True)
    zs_sq = (zs * zs).sum(1)
    risk_scale = 1e6 * 8.0 * float(np.finfo(np.float64).eps)
    zs_sq_max = float(zs_sq.max())
    out = torch.empty(n, dtype=z.dtype, device=z.device)
    chunk = max(1, min(chunk, 2**23 // n))
    sub = max(1, 2**23 // (m * d))
    # Flat and spherical distances are increasing functions of the squared chord: rank on it directly.
    monotone = geom.kind != "stereographic" or geom.k == 0.0
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        rows = torch.arange(e - s, device=z.device)
        sq = torch.addmm(zs_sq[None, :], zs[s:e], zs.T, alpha=-2.0).add_(zs_sq[s:e, None]).clamp_min_(0.0)
        if monotone:
            sq[rows, rows + s] = float("inf")
            vals, cand = torch.topk(sq, m, dim=1, largest=False)
            sq_k = vals[:, k - 1]
            out[s:e] = geom.dist_from_sqdist(sq_k, sq_k, sq_k)
        else:
            dist = geom.dist_from_sqdist(sq, z_sq[s:e, None], z_sq[None, :])
            dist[rows, rows + s] = float("inf")
            vals, cand = torch.topk(dist, m, dim=1, largest=False)
            out[s:e] = vals[:, k - 1]
            sq_k = sq.gather(1, cand[:, k - 1 : k]).squeeze(1)
        risky = torch.nonzero(sq_k < risk_scale * (zs_sq[s:e] + zs_sq_max)).squeeze(1)
        for r in range(0, risky.numel(), sub):
            idx = risky[r : r + sub]
            exact = geom.dist(z[s + idx][:, None, :], z[cand[idx]])
            out[s + idx] = torch.sort(exact, dim=1).values[:, k - 1]
    return out
