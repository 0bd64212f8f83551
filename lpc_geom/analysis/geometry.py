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

from lpc_geom.analysis._validation import check_manifold

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

    The checks are :func:`~lpc_geom.analysis._validation.check_manifold`'s.

    Raises
    ------
    TypeError
        A manifold other than Euclidean, unconstrained Sphere, or a stereographic model.
    ValueError
        A Sphere restricted to a subspace (``intersection``/``complement``), a non-scalar curvature, or a
        non-finite or wrong-sign curvature (e.g. ``PoincareBall(c=-1)``, which geoopt stores as ``k = nan``).
    """
    return Geometry(*check_manifold(manifold))


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
    """Geodesic distances (N, K, in the centres' dtype) from every latent to every class centre.

    The other-class columns use the Gram identity (memory N x K, never N x N); the own-class column is
    recomputed from direct differences so that collapsed classes keep their tiny distances exactly
    (or taken from ``own`` when the caller already has them).
    """
    n = z.shape[0]
    out = torch.empty(n, centres.shape[0], dtype=centres.dtype, device=z.device)
    c_sq = (centres * centres).sum(1)
    for s in range(0, n, chunk):
        zb = z[s : s + chunk].to(centres.dtype)  # float32 latents: one block at a time
        sq = pairwise_sqdist(zb, centres)
        out[s : s + chunk] = geom.dist_from_sqdist(sq, (zb * zb).sum(1, keepdim=True), c_sq[None, :])
    if own is None:
        own = geom.dist(z, centres.index_select(0, codes))
    out.scatter_(1, codes[:, None], own[:, None])
    return out


# Euclidean k-NN uses scipy's cKDTree up to this dimension (exact differences, fast); beyond it, and on
# manifolds, chunked brute force with rounding bounds and exact re-measurement (kth_neighbour_distance).
_KDTREE_MAX_DIM = 16
# The k-NN of a point set among itself takes the products of its Gram matrix once, from its upper
# triangle, when the matrix has at most this many entries (128 MiB of float32, 256 MiB of float64).
_MAX_GRAM_ENTRIES = 1 << 25
# Levels of re-centring on a group's own candidates before falling back to direct differences.
_MAX_RECENTRE_DEPTH = 4
# Candidates per row beyond k on the first try (the rows whose k nearest they do not provably hold get 4k).
_CANDIDATE_MARGIN = 4
# Rows with more ambiguous candidates than this are re-centred on their candidates rather than measured
# from direct differences (a matrix product on the group is cheaper than that many differences per row).
_MAX_DIRECT = 8
# float32 products are used only while their rounding bound (d + 16) eps32 stays below this.
_MAX_FLOAT32_GAMMA = 1e-2


def _product_dtype(d: int, device: torch.device) -> torch.dtype:
    """float32 for the Gram products of the k-NN search where BLAS computes them in true float32 (no TF32
    or bfloat16 shortcuts, whose rounding the bound below does not cover), float64 otherwise."""
    if (d + 16) * float(np.finfo(np.float32).eps) > _MAX_FLOAT32_GAMMA:
        return torch.float64
    if torch.get_float32_matmul_precision() != "highest":
        return torch.float64
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return torch.float64
    return torch.float32 if device.type in ("cpu", "cuda") else torch.float64


def kth_neighbour_distance(geom: Geometry, z: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    r"""Distance from each row of ``z`` to its ``k``-th nearest other row (geodesic, normalised units).

    Requires ``k < len(z)``. Exact duplicates give exactly 0. Memory is ``chunk x len(z)``.

    Brute force (``d > 16`` or a manifold). The points are shifted by their mean :math:`c` and scaled by
    the power of two :math:`s` that brings their largest coordinate into :math:`[1/2, 1)` (exact), and
    rounded to the precision of the products, :math:`a_i = \mathrm{fl}(s(z_i - c))`: float32 where BLAS
    computes float32 products in float32 (float64 otherwise). Squared distances come from the Gram
    identity :math:`\hat\delta_{ij} = \|a_i\|^2 + \|a_j\|^2 - 2\langle a_i, a_j\rangle` (norms in
    float64), whose error against the exact :math:`s^2\|z_i - z_j\|^2` is at most

    .. math:: |\hat\delta_{ij} - s^2\|z_i - z_j\|^2| \le \gamma\,(\|a_i\|^2 + \|a_j\|^2) + \tau,

    with :math:`\gamma = (d + 16)\,\varepsilon_{32}` for float32 products (the d-term dot product
    :math:`\le d u (\|a_i\|^2 + \|a_j\|^2)`, the float32 rounding of the shifted points
    :math:`\le 4u(\ldots)`, and the additions of the identity :math:`\le 3u(\ldots)`, :math:`u =
    \varepsilon_{32}/2`: about half the budget), :math:`\gamma = (d + 4)\,\varepsilon_{64}` for float64
    ones, and :math:`\tau = 16 d` times the smallest subnormal of the product dtype (underflow of tiny
    coordinates and products). Each pair thus gets bounds :math:`[\ell_{ij}, h_{ij}]`, and for each row,
    among its ``k + 4`` smallest :math:`\hat\delta_{ij}` (``4k`` for the rows where that is not enough: a
    set that provably holds the k nearest when the lower bound of every point outside it exceeds
    :math:`U_i` below):

    * :math:`U_i` = the k-th smallest :math:`h_{ij}` bounds the true k-th distance from above, and
      :math:`L_i` = the k-th smallest :math:`\ell_{ij}` from below;
    * a point with :math:`h_{ij} < L_i` is certainly among the k nearest and one with
      :math:`\ell_{ij} > U_i` certainly is not; with :math:`m_i` points of the first kind, the k-th
      distance is the :math:`(k - m_i)`-th smallest exact distance among the others (the *ambiguous*
      candidates, whose intervals meet :math:`[L_i, U_i]`: usually one or two), which are measured from
      direct differences in float64.

    Rows whose candidates cannot be bounded that way, or with more than 8 ambiguous ones -- neighbours
    closer than the identity can resolve at this shift, such as a tight class far from the global mean
    (collapsed latents) -- get every point whose lower bound is at most :math:`U_i` (a set that provably
    contains the k nearest); the rows sharing candidates are grouped and the same computation is repeated
    on their candidates alone, shifted by their own mean and rescaled, which makes the rounding bound as
    small as the group's spread (direct differences after four levels without progress).

    The result is therefore the exact k-th distance up to float64 rounding of the distance itself
    (computed from direct differences), at the cost of matrix products for almost all pairs.
    """
    n, d = z.shape
    if geom.kind == "euclidean" and d <= _KDTREE_MAX_DIM:
        from scipy.spatial import cKDTree

        pts = z.cpu().numpy()
        # k + 1 because each point finds itself at distance 0.
        dist, _ = cKDTree(pts).query(pts, k=k + 1)
        return torch.from_numpy(np.ascontiguousarray(dist[:, k])).to(z.device)
    idx = torch.arange(n, device=z.device)
    z_sq = None if geom.kind != "stereographic" or geom.k == 0.0 else (z * z).sum(1)  # the ranking's weights
    return _kth_among(geom, z, z_sq, idx, idx, k, chunk, 0)


def _pow2_scale(x: torch.Tensor) -> float:
    """The power of two ``s`` with ``s * max|x|`` in [1/2, 1) (1 when ``x`` is all zero)."""
    top = float(x.abs().max()) if x.numel() else 0.0
    return 1.0 if top == 0.0 else math.ldexp(1.0, -math.frexp(top)[1])


def _kth_among(
    geom: Geometry,
    z: torch.Tensor,
    z_sq: torch.Tensor | None,
    rows: torch.Tensor,
    pts: torch.Tensor,
    k: int,
    chunk: int,
    depth: int,
) -> torch.Tensor:
    """k-th neighbour distances of the rows ``z[rows]`` among the points ``z[pts]`` (sorted indices that
    contain every row's k nearest, and the row itself); see :func:`kth_neighbour_distance`. ``z_sq``: the
    squared norms of the rows of ``z`` on stereographic models of nonzero curvature, else ``None``.

    Rows are ranked on :math:`q_{ij} = \\|z_i - z_j\\|^2 w_j`: the geodesic distance is an increasing function
    of it for each row (``w = 1`` on flat spaces and the sphere; :math:`w_j = 1/(1 + k\\|z_j\\|^2)` on
    stereographic models, where :math:`t_{ij}` is :math:`2|k| q_{ij}/(1 + k\\|z_i\\|^2)`).
    """
    p, d = pts.numel(), z.shape[1]
    flat = geom.kind != "stereographic" or geom.k == 0.0
    dtype = _product_dtype(d, z.device)
    info = np.finfo(np.float32 if dtype == torch.float32 else np.float64)
    gamma = (d + (16 if dtype == torch.float32 else 4)) * float(info.eps)
    tau = 16.0 * d * float(info.smallest_subnormal)
    P = z[pts]  # a copy: shifted and scaled in place
    centre = P.mean(0, keepdim=True)
    P.sub_(centre)
    scale = _pow2_scale(P)
    ps = P.mul_(scale).to(dtype)
    ps_sq = ps.to(torch.float64).square().sum(1)
    # the ranking's weights (stereographic models), rounded like the products; the bound covers it
    w = None if flat else 1.0 / (1.0 + geom.k * z_sq[pts])
    w_max = 1.0 if flat else float(w.max())
    ps_err = gamma * ps_sq + tau if w is None else (gamma * ps_sq + tau) * w
    ps_sq_max = float(ps_sq.max())
    ps_sq_lo, w_lo = ps_sq.to(dtype), None if w is None else w.to(dtype)
    out = torch.empty(rows.numel(), dtype=z.dtype, device=z.device)
    # candidates per row: k plus a margin (enough for almost every row), then 4k for the rows whose k nearest
    # the first set does not provably hold, then every point the bounds cannot rule out (_kth_wide)
    widths = sorted({min(p - 1, k + _CANDIDATE_MARGIN), min(p - 1, 4 * k)})
    step = max(1, min(chunk, 2**23 // p))
    own_rows = rows.numel() == p and bool(torch.equal(rows, pts))  # the rows are the points themselves
    gram = _symmetric_gram(ps) if own_rows and p * p <= _MAX_GRAM_ENTRIES else None
    wide_rows, wide_masks = [], []  # rows for _kth_wide (indices into rows), and their candidates over pts

    def bounds(q: torch.Tensor, row_sq: torch.Tensor, row_err: torch.Tensor, m: int):
        """The m smallest of each row of q, their bounds, the k-th smallest lower bound L_i, whether they
        hold the k nearest, and which of them are ambiguous."""
        vals, cand = torch.topk(q, m, dim=1, largest=False)
        est = vals.to(torch.float64).add_(row_sq[:, None])
        err = row_err[:, None] + gamma * ps_sq[cand]
        if w is not None:
            err.mul_(w[cand])
        hi, lo = est + err, (est - err).clamp_min_(0.0)
        upper = torch.kthvalue(hi, k, dim=1).values
        lower = torch.kthvalue(lo, k, dim=1).values
        # a lower bound for every point outside the candidates
        outside = est[:, -1] - (row_err + gamma * ps_sq_max) * w_max
        contained = outside > upper if m < p - 1 else torch.ones_like(upper, dtype=torch.bool)
        ambiguous = (lo <= upper[:, None]) & (hi >= lower[:, None])
        return pts[cand], hi, upper, lower, contained, ambiguous

    for s in range(0, rows.numel(), step):
        r = rows[s : s + step]
        if own_rows:
            xs, xs_sq = ps[s : s + step], ps_sq[s : s + step]
        else:
            xs = ((z[r] - centre) * scale).to(dtype)
            xs_sq = xs.to(torch.float64).square().sum(1)
        # q_ij: the squared distance estimate less the row's own norm (a constant of the row's ranking),
        # except on stereographic models, whose weights need the whole of it
        if gram is None:
            q = torch.addmm(ps_sq_lo[None, :], xs, ps.T, alpha=-2.0)
        else:
            q = torch.add(ps_sq_lo[None, :], gram[s : s + step], alpha=-2.0)
        row_sq = xs_sq
        if w is not None:
            q.add_(xs_sq.to(dtype)[:, None]).clamp_min_(0.0).mul_(w_lo[None, :])
            row_sq = torch.zeros_like(xs_sq)
        q[torch.arange(r.numel(), device=z.device), torch.searchsorted(pts, r)] = float("inf")  # self
        row_err = gamma * xs_sq + tau
        todo = torch.arange(r.numel(), device=z.device)  # rows of this block left (q and the rest: theirs)
        for m in widths:
            cand, hi, upper, lower, contained, ambiguous = bounds(q, row_sq, row_err, m)
            # more ambiguous candidates than direct differences are worth: re-centred on them instead
            crowded = ambiguous.sum(1) > _MAX_DIRECT
            done = contained & ~crowded
            out[s + todo[done]] = _kth_from_candidates(geom, z, r[todo[done]], cand[done], hi[done], lower[done],
                                                       ambiguous[done], k)
            last = m == widths[-1]
            # rows that more candidates would not help (crowded), or no more to try: every point they
            # cannot rule out is a candidate
            to_wide = ~done & (crowded | last)
            if bool(to_wide.any()):
                # lower bounds of every pair (the row's part of the bound taken at w_max: looser, still valid)
                low = q[to_wide].to(torch.float64).add_(row_sq[to_wide, None]).sub_(ps_err[None, :])
                wide_masks.append(low <= (upper[to_wide] + row_err[to_wide] * w_max)[:, None])
                wide_rows.append(s + todo[to_wide])
                del low
            left = ~done & ~to_wide
            if not bool(left.any()):
                break
            todo, q, row_sq, row_err = todo[left], q[left], row_sq[left], row_err[left]
    if wide_rows:  # all blocks' at once, so that the rows of one tight cluster form one group
        i, order = torch.sort(torch.cat(wide_rows))  # in order, like the rows: a group may be its points
        out[i] = _kth_wide(geom, z, z_sq, rows[i], pts, torch.cat(wide_masks)[order], k, chunk, depth)
    return out


def _kth_from_candidates(geom, z, r, cand, hi, lower, ambiguous, k) -> torch.Tensor:
    """k-th distances of the rows ``z[r]`` whose candidates ``z[cand]`` (rows, m) hold their k nearest, from
    the candidates' upper bounds ``hi``, the k-th smallest lower bound ``lower`` of each row and the
    ``ambiguous`` candidates: the candidates certainly nearer (``hi < lower``) are counted, the ambiguous
    ones measured from direct differences."""
    nearer = (hi < lower[:, None]).sum(1)
    i, j = torch.nonzero(ambiguous, as_tuple=True)
    exact = torch.full_like(hi, float("inf"))
    exact[i, j] = geom.dist(z[r[i]], z[cand[i, j]])
    # nearer <= k - 1 (at most k - 1 lower bounds lie below the k-th) and nearer + ambiguous >= k
    pick = (k - 1 - nearer).clamp_(0, hi.shape[1] - 1)
    return torch.sort(exact, dim=1).values.gather(1, pick[:, None]).squeeze(1).to(z.dtype)


def _symmetric_gram(x: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """:math:`XX^\\top` (p, p) from the products of the blocks on and above the diagonal (half the
    products of one matrix product), mirrored below it."""
    p = x.shape[0]
    out = torch.empty(p, p, dtype=x.dtype, device=x.device)
    for a in range(0, p, block):
        rows = slice(a, min(a + block, p))
        torch.matmul(x[rows], x[a:].T, out=out[rows, a:])
        out[a + block :, rows] = out[rows, a + block :].T
    return out


def _kth_wide(
    geom: Geometry,
    z: torch.Tensor,
    z_sq: torch.Tensor | None,
    rows: torch.Tensor,
    pts: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    chunk: int,
    depth: int,
) -> torch.Tensor:
    """Rows whose candidates (``mask`` over ``pts``) the bounds could not narrow down: grouped by the first of
    their candidates and themselves, then re-centred on each group's candidates (or measured from direct
    differences)."""
    out = torch.empty(rows.numel(), dtype=z.dtype, device=z.device)
    # the first of a row's candidates and itself: the rows of one tight cluster share it
    key = torch.minimum(mask.to(torch.int8).argmax(dim=1), torch.searchsorted(pts, rows))
    for g in torch.unique(key):
        members = torch.nonzero(key == g).squeeze(1)
        union = torch.unique(torch.cat([pts[mask[members].any(0)], rows[members]]))
        if depth < _MAX_RECENTRE_DEPTH and union.numel() < pts.numel():
            out[members] = _kth_among(geom, z, z_sq, rows[members], union, k, chunk, depth + 1)
            continue
        # no progress from re-centring: direct differences against every candidate of the group
        sub = max(1, 2**23 // (union.numel() * z.shape[1]))
        for a in range(0, members.numel(), sub):
            i = members[a : a + sub]
            exact = geom.dist(z[rows[i]][:, None, :], z[union][None, :, :])
            exact.masked_fill_(rows[i][:, None] == union[None, :], float("inf"))
            out[i] = torch.kthvalue(exact, k, dim=1).values
    return out
