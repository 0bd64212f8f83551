r"""Neural-collapse and latent-collapse figures: NC1-NC4, within-class spread, separation ratio, norm CV.

Notation (true labels throughout): :math:`z_i` the latents in the chart of the
geometry (see :mod:`lpc_geom.analysis.geometry`), :math:`\mu_c` the class means, :math:`\mu_G` the
*unweighted* mean of the class means, :math:`N` samples, :math:`K` classes, :math:`d` dimensions,

.. math::

    \Sigma_W = \frac1N \sum_i (z_i - \mu_{y_i})(z_i - \mu_{y_i})^\top, \qquad
    \Sigma_B = \frac1K \sum_c (\mu_c - \mu_G)(\mu_c - \mu_G)^\top,

and :math:`\Sigma_T` the covariance of all latents about their sample mean.

Every metric is a function ``metric(latents, labels, *, manifold=None)`` that validates its inputs, or
takes a precomputed :class:`ClassStatistics` (``metric(stats)``) so several metrics share one pass over
the data. A metric that is mathematically undefined for the given data raises
:class:`UndefinedMetricError` (a ``ValueError``) naming the reason; :func:`lpc_geom.analyze` records such
figures as NaN with the reason in ``CollapseReport.undefined``. The report's ``collapse`` and ``separation``
groups (:func:`collapse_group`, :func:`separation_group`) are defined here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from lpc_geom.analysis._validation import (
    EncodedLabels,
    UndefinedMetricError,
    align_to_classes,
    check_classifier,
    check_head,
    check_latents,
    check_logits,
    check_min_class_size,
    check_output_classes,
    encode_labels,
)
from lpc_geom.analysis.geometry import (
    Geometry,
    class_centres,
    class_first_members,
    distances_to_centres,
    geometry_from_manifold,
)

__all__ = [
    "ClassStatistics",
    "SeparationRatio",
    "UndefinedMetricError",
    "UnitStatistics",
    "class_statistics",
    "etf_distance",
    "nc1",
    "nc2_equiangular",
    "nc2_equinorm",
    "nc2_maxangle",
    "nc3",
    "nc4",
    "norm_cv",
    "separation_ratio",
    "sigma_w",
    "sigma_w_rel",
]

_EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True, eq=False)
class UnitStatistics:
    """Per-unit and per-class sign statistics read by the hypercube figures (float64, chart coordinates).

    Attributes
    ----------
    unit_mean, unit_m2, unit_m3, unit_m4 : Tensor, shape (d,)
        Per-unit mean and population central moments of order 2-4 over all samples.
    sign_pos, sign_neg : Tensor, shape (K, d)
        Per class and unit, the number of samples with a positive / negative coordinate.
    abs_max : Tensor, shape (K, d)
        Per class and unit, :math:`\\max_{i \\in c} |u_{ij}|`: the scale of the rounding error of the class
        mean (see :func:`~lpc_geom.analysis.hypercube.class_codes`).
    """

    unit_mean: torch.Tensor
    unit_m2: torch.Tensor
    unit_m3: torch.Tensor
    unit_m4: torch.Tensor
    sign_pos: torch.Tensor
    sign_neg: torch.Tensor
    abs_max: torch.Tensor


@dataclass(frozen=True, eq=False)
class ClassStatistics:
    """Moment statistics shared by the collapse and hypercube figures (all float64, chart coordinates).

    Built in memory by :func:`class_statistics`, or in one streaming pass by
    :class:`~lpc_geom.analysis.accumulator.CollapseAccumulator`; the figures computed from either agree.

    Attributes
    ----------
    geometry : Geometry
    n, d : int
        Number of samples and ambient dimension.
    classes : numpy.ndarray, shape (K,)
        Original labels in sorted order; index ``c`` of every per-class array refers to ``classes[c]``.
    counts : Tensor, shape (K,)
        Samples per class (float64).
    means : Tensor, shape (K, d)
        Class means in chart coordinates.
    within_trace : float
        :math:`\\operatorname{Tr}\\Sigma_W`.
    mean_svals, mean_axes : Tensor, shapes (m,) and (m, d)
        Thin SVD of the centred means :math:`M = U S V^\\top` (:func:`centred_means_svd`,
        :math:`m = \\min(K, d)`): the singular values and the rows of :math:`V^\\top`.
    within_axes : Tensor, shape (m,)
        :math:`v_i^\\top \\Sigma_W v_i` for the rows :math:`v_i` of ``mean_axes`` (the within-class
        spread along the directions of the class means, which NC1 needs).
    mean_coords : Tensor, shape (N, m), or None
        In memory, when :math:`m < d/2` (it then takes less memory than the latents): the coordinates
        :math:`E_{ia} = e_i^\\top v_a` of the residuals :math:`e_i = u_i - \\mu_{y_i}` along ``mean_axes``,
        from which the distances to the class centres follow (:func:`centre_distances`).
    norm_mean, norm_var : float or None
        Mean and population variance of the distances to the origin (``None`` on the sphere).
    unit_source : UnitStatistics or callable
        The per-unit statistics of the hypercube figures, or a function computing them from the in-memory
        latents on first use (:attr:`units`; the collapse figures do not need them). Their fields are
        also read as attributes of this object (``unit_mean``, ``unit_m2`` ... ``abs_max``).
    eps : float
        Machine epsilon of the input dtype.
    latents, chart, codes, own_norms : Tensor or None
        In memory only: the (checked) latents and their chart coordinates (float64, or float32 for float32
        input on a flat geometry), the class codes, and on flat geometries the residual norms
        :math:`\\|u_i - \\mu_{y_i}\\|` (the own-class distances), needed by the distance-based figures.
    logits : Tensor or None
        In memory, when :func:`statistics_from_arrays` was given a linear head on a flat geometry: the
        head's float64 outputs (N, K_out), :math:`W z_i + b = W e_i + (W \\mu_{y_i} + b)` from the residuals.
    """

    geometry: Geometry
    n: int
    d: int
    classes: np.ndarray
    counts: torch.Tensor
    means: torch.Tensor
    within_trace: float
    mean_svals: torch.Tensor
    mean_axes: torch.Tensor
    within_axes: torch.Tensor
    norm_mean: float | None
    norm_var: float | None
    unit_source: UnitStatistics | Callable[[], UnitStatistics]
    eps: float
    latents: torch.Tensor | None = None
    chart: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    own_norms: torch.Tensor | None = None
    mean_coords: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    @property
    def units(self) -> UnitStatistics:
        """The :class:`UnitStatistics`, computed on first use when given as a function."""
        if not isinstance(self.unit_source, UnitStatistics):
            object.__setattr__(self, "unit_source", self.unit_source())
        return self.unit_source

    unit_mean = property(lambda self: self.units.unit_mean, doc="See :class:`UnitStatistics`.")
    unit_m2 = property(lambda self: self.units.unit_m2, doc="See :class:`UnitStatistics`.")
    unit_m3 = property(lambda self: self.units.unit_m3, doc="See :class:`UnitStatistics`.")
    unit_m4 = property(lambda self: self.units.unit_m4, doc="See :class:`UnitStatistics`.")
    sign_pos = property(lambda self: self.units.sign_pos, doc="See :class:`UnitStatistics`.")
    sign_neg = property(lambda self: self.units.sign_neg, doc="See :class:`UnitStatistics`.")
    abs_max = property(lambda self: self.units.abs_max, doc="See :class:`UnitStatistics`.")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def total_trace(self) -> float:
        """:math:`\\mathrm{Tr}\\,\\Sigma_T = \\mathrm{Tr}\\,\\Sigma_W + \\sum_c (n_c/N)\\|\\mu_c - \\bar z\\|^2`."""
        w = self.counts / self.n
        grand = (w[:, None] * self.means).sum(0)
        return self.within_trace + float((w * ((self.means - grand) ** 2).sum(1)).sum())

    def centred_means(self) -> torch.Tensor:
        """:math:`M = [\\mu_c - \\mu_G]_c`, shape (K, d)."""
        return self.means - self.means.mean(0, keepdim=True)

    def centres(self) -> torch.Tensor:
        """Class centres on the manifold (rows may be NaN on the sphere, see ``geometry.class_centres``)."""
        return class_centres(self.geometry, self.means)


def prepare_inputs(latents, labels, manifold, min_class_size: int = 2):
    """Validate the public inputs once: returns ``(geometry, z, eps, encoded_labels, codes_tensor)``.

    ``z`` is float64, except float32 latents on a flat geometry, which are kept as they are (the statistics
    convert row blocks to float64, so the whole array is never copied).
    """
    geom = geometry_from_manifold(manifold)
    z, eps = check_latents(latents, keep_float32=geom.is_flat)
    enc = encode_labels(labels, z.shape[0])
    check_min_class_size(np.bincount(enc.codes, minlength=enc.n_classes), enc.classes, min_class_size)
    z = geom.check_points(z, eps)
    codes = torch.from_numpy(enc.codes).to(z.device)
    return geom, z, eps, enc, codes


def _row_blocks(n: int, d: int) -> list[slice]:
    """Row blocks of about 2 MiB of float64, so that the passes over a block stay in cache."""
    rows = max(64, (1 << 18) // max(d, 1))
    return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]


def merge_central_moments(
    na: float, mean_a: torch.Tensor, sums_a: list[torch.Tensor], nb: float, mean_b: torch.Tensor, sums_b: list
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    r"""Pébay's (2008) pairwise update of per-unit means and sums of central powers of order 2, 3, 4.

    With :math:`\delta = \bar x_b - \bar x_a`, :math:`n = n_a + n_b`:
    :math:`M_2 = M_{2a} + M_{2b} + \delta^2 n_a n_b / n`,
    :math:`M_3 = M_{3a} + M_{3b} + \delta^3 n_a n_b (n_a - n_b) / n^2 + 3\delta (n_a M_{2b} - n_b M_{2a}) / n`,
    :math:`M_4 = M_{4a} + M_{4b} + \delta^4 n_a n_b (n_a^2 - n_a n_b + n_b^2) / n^3
    + 6\delta^2 (n_a^2 M_{2b} + n_b^2 M_{2a}) / n^2 + 4\delta (n_a M_{3b} - n_b M_{3a}) / n`.
    Returns the merged mean and ``[M_2, M_3, M_4]``.
    """
    n = na + nb
    a2, a3, a4 = sums_a
    b2, b3, b4 = sums_b
    d1 = mean_b - mean_a
    merged = [
        a2 + b2 + d1**2 * na * nb / n,
        a3 + b3 + d1**3 * na * nb * (na - nb) / n**2 + 3.0 * d1 * (na * b2 - nb * a2) / n,
        a4
        + b4
        + d1**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
        + 6.0 * d1**2 * (na * na * b2 + nb * nb * a2) / n**2
        + 4.0 * d1 * (na * b3 - nb * a3) / n,
    ]
    return mean_a + d1 * nb / n, merged


def central_power_sums(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Column means of ``x`` and the column sums of the central powers 2, 3, 4 (two buffers)."""
    mean = x.mean(0)
    dev = x - mean
    pw = dev * dev
    m2 = pw.sum(0)
    m3 = dev.mul_(pw).sum(0)
    return mean, [m2, m3, pw.square_().sum(0)]


def centred_means_svd(means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (m,) and right singular vectors (m, d) of the centred means :math:`M = [\\mu_c - \\mu_G]_c`."""
    _, svals, vh = torch.linalg.svd(means - means.mean(0, keepdim=True), full_matrices=False)
    return svals, vh


def statistics_from_arrays(
    geom: Geometry,
    z: torch.Tensor,
    eps: float,
    enc: EncodedLabels,
    codes: torch.Tensor,
    linear: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> ClassStatistics:
    r""":class:`ClassStatistics` of validated arrays (float64 results).

    Two passes over the data in row blocks that stay in cache, each block converted to float64 on its own
    (never the whole array).

    1. Per class, the sums of the rows shifted by the class's first member :math:`s_c`
       (see :func:`~lpc_geom.analysis.geometry.class_means`), and the norms. The means are
       :math:`\mu_c = s_c + o_c` with :math:`o_c = \frac{1}{n_c}\sum_{i \in c}(u_i - s_c)`.
    2. With the thin SVD :math:`M = U S V^\top` of the centred means, the residuals
       :math:`e_i = (u_i - s_c) - o_c` (the same arithmetic per row as the whole-array formulas: a class
       of identical points has exactly that point as its mean and zero residuals) give
       :math:`\operatorname{Tr}\Sigma_W = \frac1N\sum_i \|e_i\|^2`, the within-class spread along the
       mean directions :math:`v_a^\top\Sigma_W v_a = \frac1N\sum_i (e_i^\top v_a)^2` (the coordinates
       :math:`e_i^\top v_a` are kept when there are fewer than d/2 axes) and, on flat geometries, the
       own-class distances :math:`\|e_i\|`. Every product is taken in float64 on the
       centred residuals, so the error is relative to the spread itself, however collapsed the classes,
       and float32 input gives the figures of its float64 copy.

    With ``linear = (W, b)`` (float64, W of shape (K_out, d)) on a flat geometry, pass 2 also gives the
    head's outputs :math:`W z_i + b = W e_i + (W\mu_{y_i} + b)` (``logits``), in the same product as the
    projections onto the mean axes.

    The hypercube figures' :class:`UnitStatistics` take a third pass, on first use
    (:func:`unit_statistics`).
    """
    n, d = z.shape
    k = enc.n_classes
    u = geom.to_chart(z)
    f64 = {"dtype": torch.float64, "device": u.device}
    counts = torch.bincount(codes, minlength=k).to(torch.float64)
    shift = class_first_members(u, codes, k).to(torch.float64)
    sums = torch.zeros(k, d, **f64)
    has_norm = geom.has_origin
    norms = torch.empty(n, **f64) if has_norm else None
    blocks = _row_blocks(n, d)
    for rows in blocks:
        ub, cb = u[rows].to(torch.float64), codes[rows]
        sums.index_add_(0, cb, ub - shift.index_select(0, cb))
        if has_norm:
            norms[rows] = torch.linalg.vector_norm(ub, dim=1)  # the chart norm is the distance to the origin
    offset = sums / counts.clamp_min(1)[:, None]
    means = shift + offset
    svals, axes = centred_means_svd(means)

    m = axes.shape[0]
    logits = head_at_means = None
    if linear is not None and geom.is_flat:
        W, b = linear
        head_at_means = means @ W.T if b is None else torch.addmm(b, means, W.T)
        logits = torch.empty(n, W.shape[0], **f64)
        # one product for both (wider products are cheaper per column); its transpose view is the fast one
        columns = torch.cat([axes, W]).T
    else:
        columns = axes.T.contiguous()
    within_axes = torch.zeros(m, **f64)
    res_norms = torch.empty(n, **f64)
    coords = torch.empty(n, m, **f64) if 2 * m < d else None
    for rows in blocks:
        cb = codes[rows]
        e = u[rows].to(torch.float64, copy=True).sub_(shift.index_select(0, cb)).sub_(offset.index_select(0, cb))
        res_norms[rows] = torch.linalg.vector_norm(e, dim=1)
        proj = e @ columns
        if logits is not None:
            torch.add(proj[:, m:], head_at_means.index_select(0, cb), out=logits[rows])
            proj = proj[:, :m]
        if coords is not None:
            coords[rows] = proj
        within_axes += proj.square_().sum(0)

    norm_mean = norm_var = None
    if norms is not None:
        norm_mean = float(norms.mean())
        norm_var = float(((norms - norm_mean) ** 2).mean())
    return ClassStatistics(
        geometry=geom,
        n=n,
        d=d,
        classes=enc.classes,
        counts=counts,
        means=means,
        within_trace=float(res_norms.square().sum()) / n,
        mean_svals=svals,
        mean_axes=axes,
        within_axes=within_axes / n,
        norm_mean=norm_mean,
        norm_var=norm_var,
        unit_source=lambda: unit_statistics(u, codes, counts, means),
        eps=eps,
        # The in-memory fields, which the distance-based figures read.
        latents=z, chart=u, codes=codes, own_norms=res_norms if geom.is_flat else None, mean_coords=coords,
        logits=logits,
    )


def unit_statistics(u: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor, means: torch.Tensor) -> UnitStatistics:
    r""":class:`UnitStatistics` of chart coordinates ``u`` (N, d) with class ``codes``, class ``counts`` and
    ``means`` (float64), in one pass over row blocks converted to float64.

    The central moments are sums of the powers 2-4 of :math:`u_i - \bar u` about the grand mean
    :math:`\bar u = \sum_c (n_c/N)\mu_c`. The sign counts follow from the sign sums
    :math:`S_{cj} = \sum_{i \in c}\operatorname{sign} u_{ij}` and the zero counts :math:`Z_{cj}` as
    :math:`n_{\pm} = (n_c - Z_{cj} \pm S_{cj})/2`. Signs, zeros and magnitudes are read from the input's own
    values (float32 latents: no conversion), and their counts kept in that dtype while they are exact
    integers in it (:math:`N < 2^{24}` in float32); the largest magnitudes are exact in any dtype.
    """
    n, d = u.shape
    k = counts.shape[0]
    f64 = {"dtype": torch.float64, "device": u.device}
    exact_counts = u.dtype == torch.float64 or (u.dtype == torch.float32 and n < 2**24)
    tally = {"dtype": u.dtype if exact_counts else torch.float64, "device": u.device}
    signs = torch.zeros(k, d, **tally)
    abs_max = torch.zeros(k, d, dtype=u.dtype, device=u.device)
    # zero coordinates (ReLU latents) need counts of their own; most float latents have none
    zeros = torch.zeros(k, d, **tally) if int(torch.count_nonzero(u)) < n * d else None
    unit_mean = (counts / n) @ means
    power_sums = [torch.zeros(d, **f64) for _ in range(3)]
    for rows in _row_blocks(n, d):
        ub, cb = u[rows], codes[rows]
        signs.index_add_(0, cb, torch.sign(ub).to(signs.dtype))
        if zeros is not None:
            zeros.index_add_(0, cb, (ub == 0).to(zeros.dtype))
        class_abs_max(ub, cb, k, out=abs_max)
        dev = ub.to(torch.float64, copy=True).sub_(unit_mean)
        pw = dev * dev
        power_sums[0] += pw.sum(0)
        power_sums[1] += dev.mul_(pw).sum(0)
        power_sums[2] += pw.square_().sum(0)
    signs = signs.to(torch.float64)
    nonzero = counts[:, None] - (0.0 if zeros is None else zeros.to(torch.float64))
    return UnitStatistics(
        unit_mean=unit_mean,
        unit_m2=power_sums[0] / n,
        unit_m3=power_sums[1] / n,
        unit_m4=power_sums[2] / n,
        sign_pos=(nonzero + signs) * 0.5,
        sign_neg=(nonzero - signs) * 0.5,
        abs_max=abs_max.to(torch.float64),
    )


def class_abs_max(u: torch.Tensor, codes: torch.Tensor, n_classes: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """(K, d) per class and unit, the largest magnitude :math:`\\max_{i: y_i = c} |u_{ij}|` (0 for absent classes).

    With ``out`` (K, d), the running maximum over earlier row blocks, it is updated in place and returned.
    """
    if out is None:
        out = torch.zeros(n_classes, u.shape[1], dtype=u.dtype, device=u.device)
    return out.scatter_reduce_(0, codes[:, None].expand(-1, u.shape[1]), u.abs(), reduce="amax")


def class_statistics(latents, labels, *, manifold=None, min_class_size: int = 2) -> ClassStatistics:
    """Validate ``latents`` (N, d) and ``labels`` (N,) and compute their :class:`ClassStatistics`.

    Raises
    ------
    TypeError, ValueError
        See :func:`lpc_geom.analyze` for the list of rejected inputs.
    """
    geom, z, eps, enc, codes = prepare_inputs(latents, labels, manifold, min_class_size)
    return statistics_from_arrays(geom, z, eps, enc, codes)


def as_statistics(latents, labels, manifold) -> ClassStatistics:
    """``latents`` if it already is a :class:`ClassStatistics`, else the statistics of (latents, labels)."""
    if isinstance(latents, ClassStatistics):
        if labels is not None or manifold is not None:
            raise TypeError("pass either ClassStatistics alone or latents with labels (and manifold)")
        return latents
    if labels is None:
        raise TypeError("labels are required when latents are an array")
    return class_statistics(latents, labels, manifold=manifold)


def _means_scale(s: ClassStatistics) -> float:
    """Size below which a centred-mean quantity is rounding noise of the class means."""
    return max(s.n_classes, s.d) * _EPS64 * max(float(s.means.norm(dim=1).max()), 1e-300)


def _normalised_centred_means(s: ClassStatistics) -> torch.Tensor:
    M = s.centred_means()
    norms = M.norm(dim=1)
    zero = norms <= _means_scale(s)
    if bool(zero.any()):
        names = ", ".join(repr(c) for c in s.classes[zero.cpu().numpy()][:5].tolist())
        raise UndefinedMetricError(
            f"the centred mean of class(es) {names} is zero (the class mean equals the mean of class means): "
            "its direction, and hence the cosines between classes, are undefined"
        )
    return M / norms[:, None]


# -- within-class spread ------------------------------------------------------------------------------
def sigma_w(latents, labels=None, *, manifold=None) -> float:
    r"""Within-class spread per dimension, :math:`\operatorname{Tr}(\Sigma_W) / d`.

    Range :math:`[0, \infty)`, in squared latent units (chart units on a manifold: ambient coordinates on
    the sphere, ``logmap0`` coordinates on stereographic models); 0 when every class is a point.
    """
    s = as_statistics(latents, labels, manifold)
    return s.within_trace / s.d


def sigma_w_rel(latents, labels=None, *, manifold=None) -> float:
    r"""Relative within-class spread, :math:`\operatorname{Tr}(\Sigma_W) / \operatorname{Tr}(\Sigma_T)`.

    Range :math:`[0, 1]`; scale-, rotation- and translation-invariant (Euclidean). Undefined when all
    latents are identical (:math:`\Sigma_T = 0`).
    """
    s = as_statistics(latents, labels, manifold)
    total = s.total_trace
    if total <= 0.0:
        raise UndefinedMetricError("all latents are identical (Tr Sigma_T = 0)")
    return min(1.0, s.within_trace / total)


def nc1(latents, labels=None, *, manifold=None) -> float:
    r"""NC1 = :math:`\operatorname{Tr}(\Sigma_W \Sigma_B^+) / K`, by the thin-SVD route.

    With the thin SVD of the centred means :math:`M = U S V^\top` (K x d),
    :math:`\Sigma_B^+ = K V S^{-2} V^\top`, hence

    .. math:: \mathrm{NC1} = \sum_i \frac{v_i^\top \Sigma_W v_i}{s_i^2}

    over the singular values above ``max(K, d) * eps * max(s_1, max_c ||mu_c||)`` (the centred means have
    rank at most K-1; the null singular value is float64 rounding). No d x d pseudo-inverse is formed.
    Range :math:`[0, \infty)`; scale-, rotation- and translation-invariant. Undefined when all class
    means coincide (:math:`\Sigma_B = 0`).
    """
    s = as_statistics(latents, labels, manifold)
    svals = s.mean_svals
    tol = max(s.n_classes, s.d) * _EPS64 * max(float(svals[0]), float(s.means.norm(dim=1).max()))
    keep = svals > tol
    if not bool(keep.any()):
        raise UndefinedMetricError("all class means coincide (Sigma_B = 0): NC1 is undefined")
    return float((s.within_axes[keep] / svals[keep] ** 2).sum())


# -- NC2 / ETF ----------------------------------------------------------------------------------------
def nc2_equinorm(latents, labels=None, *, manifold=None) -> float:
    r"""Equinorm: :math:`\operatorname{std}_c \|\mu_c - \mu_G\| / \operatorname{mean}_c \|\mu_c - \mu_G\|`.

    Population std. Range :math:`[0, \sqrt{K-1}]`; 0 for a simplex ETF. Undefined when all class means
    coincide.
    """
    s = as_statistics(latents, labels, manifold)
    norms = s.centred_means().norm(dim=1)
    mean = float(norms.mean())
    if mean <= _means_scale(s):
        raise UndefinedMetricError("all class means coincide: equinorm is undefined")
    return float(norms.std(unbiased=False)) / mean


def _pair_cosines(s: ClassStatistics) -> torch.Tensor:
    Mn = _normalised_centred_means(s)
    iu = torch.triu_indices(s.n_classes, s.n_classes, 1, device=Mn.device)
    return (Mn @ Mn.T)[iu[0], iu[1]]


def nc2_equiangular(latents, labels=None, *, manifold=None) -> float:
    r"""Equiangularity: population std of the pairwise cosines
    :math:`\cos_{cc'} = \langle \mu_c - \mu_G, \mu_{c'} - \mu_G\rangle / (\|\cdot\|\|\cdot\|)`, :math:`c < c'`.

    Range :math:`[0, 1]`; 0 for an ETF (and always for K = 2). Undefined when a centred mean is zero.
    """
    return float(_pair_cosines(as_statistics(latents, labels, manifold)).std(unbiased=False))


def nc2_maxangle(latents, labels=None, *, manifold=None) -> float:
    r"""Max-angle: :math:`\operatorname{mean}_{c<c'} |\cos_{cc'} + 1/(K-1)|`.

    Range :math:`[0, K/(K-1)]`; 0 for a simplex ETF (maximal equal angles). Undefined when a centred mean
    is zero.
    """
    s = as_statistics(latents, labels, manifold)
    return float((_pair_cosines(s) + 1.0 / (s.n_classes - 1)).abs().mean())


def etf_distance(latents, labels=None, *, manifold=None) -> float:
    r"""Distance to a simplex ETF: :math:`\| G/\|G\|_F - E/\|E\|_F \|_F`.

    :math:`G` is the Gram matrix of the normalised centred means and :math:`E = I - \mathbf 1\mathbf
    1^\top / K`. Range :math:`[0, \sqrt2]`; 0 exactly for a simplex ETF (any scale, rotation, translation).
    Undefined when a centred mean is zero.
    """
    s = as_statistics(latents, labels, manifold)
    Mn = _normalised_centred_means(s)
    G = Mn @ Mn.T
    K = s.n_classes
    E = torch.eye(K, dtype=G.dtype, device=G.device) - 1.0 / K
    return float((G / G.norm() - E / E.norm()).norm())


# -- norms --------------------------------------------------------------------------------------------
def norm_cv(latents, labels=None, *, manifold=None) -> float:
    r"""Coefficient of variation of the latent norms, :math:`\operatorname{std}_i r_i / \operatorname{mean}_i r_i`.

    :math:`r_i = \|z_i\|` (Euclidean) or the geodesic distance to the origin (stereographic models,
    normalised units). Population std. Range :math:`[0, \sqrt{N-1}]`; scale- and rotation-invariant, not
    translation-invariant (the origin is the reference). Undefined on the sphere (no origin: every norm
    is 1) and when all latents are at the origin.
    """
    s = as_statistics(latents, labels, manifold)
    if s.norm_mean is None:
        raise UndefinedMetricError("the sphere has no origin: latent norms are all 1")
    if s.norm_mean <= 0.0:
        raise UndefinedMetricError("all latents are at the origin (mean norm 0)")
    return float(np.sqrt(max(s.norm_var, 0.0))) / s.norm_mean


# -- distance-based figures ---------------------------------------------------------------------------
class SeparationRatio(NamedTuple):
    """Mean and median of :math:`R_i`, and the number of samples excluded (zero own-class distance)."""

    mean: float
    median: float
    excluded: int


def centre_distances(s: ClassStatistics) -> torch.Tensor:
    """Geodesic distances (N, K) from the latents to the class centres (in-memory statistics only)."""
    if s.latents is None:
        raise TypeError("distance-based figures need the latents: use class_statistics, not streamed moments")
    centres = s.centres()
    bad = torch.isnan(centres).any(dim=1)
    if bool(bad.any()):
        names = ", ".join(repr(c) for c in s.classes[bad.cpu().numpy()][:5].tolist())
        raise UndefinedMetricError(
            f"class(es) {names} have no extrinsic mean on the sphere (their mean direction vector is ~0)"
        )
    if s.geometry.is_flat and s.mean_coords is not None:
        return _flat_centre_distances(s)
    # on flat geometries the chart is the space itself: the residual norms are the own-class distances
    return distances_to_centres(s.geometry, s.latents, centres, s.codes, own=s.own_norms)


def _flat_centre_distances(s: ClassStatistics) -> torch.Tensor:
    r"""Euclidean centre distances from the residual coordinates along the mean axes (``s.mean_coords``).

    With :math:`z_i = \mu_c + e_i` (:math:`c = y_i`) and every difference of means in the span of the mean
    axes :math:`V`,

    .. math::

        \|z_i - \mu_q\|^2 = \|e_i\|^2 + 2\,E_i^\top V(\mu_c - \mu_q) + \|\mu_c - \mu_q\|^2,

    an (N, m) x (m, K) product instead of the (N, d) x (d, K) one of the Gram identity, with no
    cancellation of the latents' norms; the mean gaps come from direct differences and the own-class
    column is :math:`\|e_i\|` exactly.
    """
    M = s.centred_means() @ s.mean_axes.T  # (K, m): the centred means in the axes' coordinates
    F = s.mean_coords @ M.T  # F_iq = e_i . (mu_q - mu_G)
    codes = s.codes[:, None]
    gaps = torch.cdist(s.means, s.means, compute_mode="donot_use_mm_for_euclid_dist").square_()
    own_f = F.gather(1, codes)
    sq = torch.add(gaps.index_select(0, s.codes), F, alpha=-2.0, out=F)  # in place: one pass for both
    sq.add_(s.own_norms.square()[:, None] + 2.0 * own_f)
    return sq.clamp_min_(0.0).sqrt_().scatter_(1, codes, s.own_norms[:, None])


def separation_from_distances(D: torch.Tensor, codes: torch.Tensor) -> SeparationRatio:
    """:class:`SeparationRatio` from the (N, K) centre distances."""
    own = D.gather(1, codes[:, None]).squeeze(1)
    other = D.scatter(1, codes[:, None], float("inf")).min(dim=1).values
    ok = own > 0
    excluded = int((~ok).sum())
    if excluded == D.shape[0]:
        raise UndefinedMetricError(
            "every sample sits exactly on its class centre (zero own-class distance): each class is collapsed "
            "to a point and R_i = d_other / 0 for all samples; see separation_ratio_excluded"
        )
    R = other[ok] / own[ok]
    # torch.median returns the lower middle value; use the usual midpoint definition.
    return SeparationRatio(float(R.mean()), float(np.median(R.cpu().numpy())), excluded)


def separation_ratio(latents, labels=None, *, manifold=None) -> SeparationRatio:
    r"""Separation ratio :math:`R_i = \min_{q \ne y_i} d(z_i, \mu_q) / d(z_i, \mu_{y_i})`, mean and median.

    :math:`d` is the geodesic distance and :math:`\mu_q` the class centres of the geometry. Samples with a
    zero own-class distance (:math:`R_i = x/0`) are excluded from mean and median and counted in
    ``excluded``. Range :math:`[0, \infty)`; scale-, rotation-, translation- and label-permutation-invariant
    (Euclidean); :math:`R > 1` means the sample is closer to its own centre than to any other. Uses
    only the N x K distances to the centres. Undefined when every sample is excluded.
    """
    s = as_statistics(latents, labels, manifold)
    return separation_from_distances(centre_distances(s), s.codes)


def nc4_from_distances(D: torch.Tensor, net_pred: torch.Tensor, out_index: torch.Tensor) -> float:
    """NC4 from the (N, K) centre distances, the network's argmax (output index) and each class's output index."""
    ncc = out_index[D.argmin(dim=1)]
    return float((ncc != net_pred).double().mean())


def network_predictions(s: ClassStatistics, encoded: EncodedLabels, classifier=None, logits=None, classes=None):
    """Network argmax (in output-index space) and the output index of each class, from logits or (W, b)."""
    if logits is not None:
        L = check_logits(logits, s.n, s.latents.device)
    elif classifier is not None:
        L = check_head(classifier, s.latents).logits(s.latents)
    else:
        raise TypeError("nc4 needs logits or a classifier")
    out_classes = None if classes is None else check_output_classes(classes)
    out_index = torch.from_numpy(align_to_classes(L.shape[1], encoded, "logits/classifier", out_classes)).to(L.device)
    return L.argmax(dim=1), out_index


def nc4(latents, labels, *, manifold=None, classifier=None, logits=None, classes=None) -> float:
    r"""NC4: fraction of samples whose nearest-class-centre prediction differs from the network's argmax.

    .. math:: \mathrm{NC4} = \frac1N \sum_i [\arg\min_c d(z_i, \mu_c) \ne \arg\max_k f_k(z_i)]

    with :math:`f` the given ``logits``, or the outputs of ``classifier`` at the latents: :math:`Wz + b` for
    ``(W, b)`` or an ``nn.Linear`` (bias included), the module's own forward pass for any other module
    (e.g. a manifold head's classifier; see :func:`~lpc_geom.analysis._validation.check_head`). Range
    :math:`[0, 1]`. Integer labels in ``0..K_out-1`` index the outputs; other labels need ``classes``, the
    class of each output (see :func:`~lpc_geom.analysis._validation.align_to_classes`).
    """
    geom, z, eps, enc, codes = prepare_inputs(latents, labels, manifold)
    s = statistics_from_arrays(geom, z, eps, enc, codes)
    pred, out_index = network_predictions(s, enc, classifier, logits, classes)
    return nc4_from_distances(centre_distances(s), pred, out_index)


def nc3_from_weights(s: ClassStatistics, W: torch.Tensor) -> float:
    """NC3 from validated class-aligned weights W (K, d)."""
    M = s.centred_means()
    wn, mn = float(W.norm()), float(M.norm())
    if wn == 0.0:
        raise UndefinedMetricError("the classifier weight is zero: NC3 is undefined")
    if mn <= _means_scale(s):
        raise UndefinedMetricError("all class means coincide: NC3 is undefined")
    return float(((W / wn - M / mn) ** 2).sum())


def nc3(latents, labels=None, *, classifier, manifold=None, classes=None) -> float:
    r"""NC3 (self-duality, Papyan et al.): :math:`\| W/\|W\|_F - M/\|M\|_F \|_F^2`.

    :math:`W` (K x d) the classifier rows of the classes present, :math:`M` the centred class means
    (chart coordinates). No NC2 term is mixed in. Range :math:`[0, 4]`; 0 when the classifier is
    proportional to the centred means. ``classifier`` is ``(W, b)``, ``W``, an nn.Linear-like module, or a
    module head whose ``.weight`` holds its class rows (e.g. ``HyperbolicMLR``'s normals, tangent vectors at
    the origin, compared with the chart means); integer labels in ``0..K_w-1`` index its rows, other labels
    need ``classes``, the class of each row (see :func:`~lpc_geom.analysis._validation.align_to_classes`).
    """
    s = as_statistics(latents, labels, manifold)
    encoded = EncodedLabels(np.zeros(0, np.int64), s.classes, s.classes.dtype.kind in "iub")
    W, _ = check_classifier(classifier, s.d, s.means.device)
    out_classes = None if classes is None else check_output_classes(classes)
    rows = torch.from_numpy(align_to_classes(W.shape[0], encoded, "classifier", out_classes)).to(W.device)
    return nc3_from_weights(s, W[rows])


# -- the report's groups ------------------------------------------------------------------------------
def collapse_group(ctx, out) -> None:
    """The ``collapse`` group of :func:`~lpc_geom.analysis.analyze` (moment figures, ``nc3``, ``nc4``)."""
    s = ctx.stats
    out.attempt("sigma_w", lambda: sigma_w(s))
    out.attempt("sigma_w_rel", lambda: sigma_w_rel(s))
    out.attempt("norm_cv", lambda: norm_cv(s))
    out.attempt("nc1", lambda: nc1(s))
    out.attempt("nc2_equinorm", lambda: nc2_equinorm(s))
    out.attempt("nc2_equiangular", lambda: nc2_equiangular(s))
    out.attempt("nc2_maxangle", lambda: nc2_maxangle(s))
    out.attempt("etf_distance", lambda: etf_distance(s))
    if ctx.classifier is not None:
        W = ctx.classifier[0]
        out.attempt("nc3", lambda: nc3_from_weights(s, W[ctx.output_index(W.shape[0])]))
    if ctx.in_memory and (ctx.logits is not None or ctx.head is not None):
        L = ctx.logits if ctx.logits is not None else ctx.head_logits()
        out.attempt(
            "nc4", lambda: nc4_from_distances(ctx.centre_distances(), L.argmax(dim=1), ctx.output_index(L.shape[1]))
        )


def separation_group(ctx, out) -> None:
    """The ``separation`` group of :func:`~lpc_geom.analysis.analyze` (in memory only)."""
    if not ctx.in_memory:
        return
    keys = ("separation_ratio", "separation_ratio_median", "separation_ratio_excluded")
    try:
        D = ctx.centre_distances()
    except UndefinedMetricError as err:
        for key in keys:
            out.undefine(key, str(err))
        return
    try:
        res = separation_from_distances(D, ctx.stats.codes)
    except UndefinedMetricError as err:
        out.undefine(keys[0], str(err))
        out.undefine(keys[1], str(err))
        out.put(keys[2], ctx.stats.n)
        return
    out.put(keys[0], res.mean)
    out.put(keys[1], res.median)
    out.put(keys[2], res.excluded)
    out.subset(
        keys[:2], ctx.stats.n - res.excluded, ctx.stats.n, "samples",
        "the others sit exactly on their class centre (zero own-class distance, R = x/0) and are excluded",
    )
