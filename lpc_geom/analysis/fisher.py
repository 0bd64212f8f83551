r"""Fisher geometry that a classifier induces on its latent space.

A classifier with predictive distribution :math:`p(z) \in \Delta^{K-1}` on latents :math:`z \in \mathbb{R}^d`
pulls the Fisher-Rao metric of the simplex back to the latent space. The simplex with the Fisher-Rao metric
is isometric, through :math:`p \mapsto \phi = 2\sqrt{p}`, to the positive orthant of the radius-2 sphere in
:math:`\mathbb{R}^K` (sectional curvature :math:`1/4`), so everything here is the intrinsic geometry of the
map :math:`z \mapsto 2\sqrt{p(z)}`.

Linear head, :math:`p = \mathrm{softmax}(Wz + b)` with :math:`W \in \mathbb{R}^{K \times d}`
(closed forms, :func:`fisher_pointwise`, :func:`sectional_curvature`, :func:`pullback_metric`,
:func:`third_cumulant`). With the centred class weights :math:`c_a = W_a - W^\top p`:

.. math::

    G(z) = W^\top(\mathrm{diag}\,p - pp^\top)W = \sum_a p_a c_a c_a^\top = B^\top B,
    \qquad B = (\mathrm{diag}\sqrt{p} - \sqrt{p}\,p^\top)W,\ B_a = \sqrt{p_a}\,c_a,

    T_{ijk}(z) = \partial_k G_{ij} = \sum_a p_a c_{ai} c_{aj} c_{ak}.

:math:`G` is the Hessian of :math:`\mathrm{logsumexp}(Wz + b)`, so the Christoffel symbols are
:math:`\Gamma^l_{ij} = \tfrac12 G^{lk} T_{ijk}` and the sectional curvature of the plane :math:`(u, v)` is

.. math::

    K(u, v) = \frac{1}{4}\,
    \frac{T(u,v)^\top G^{-1} T(u,v) - T(u,u)^\top G^{-1} T(v,v)}{|u|_G^2 |v|_G^2 - \langle u, v\rangle_G^2}.

Write :math:`B = U S V^\top` (thin SVD) and :math:`P = UU^\top`, the orthogonal projector onto the range of
:math:`B` in :math:`\mathbb{R}^K`. Since :math:`c_k^\top G^{-1} c_l = P_{kl}/\sqrt{p_k p_l}`, summing
:math:`K` over a :math:`G`-orthonormal frame gives the scalar curvature without forming :math:`T` or
:math:`G^{-1}`:

.. math::

    R = \sum_{a \ne b} K(e_a, e_b)
      = \frac14 \sum_{k,l} \frac{P_{kl}\,(P_{kl}^2 - P_{kk}P_{ll})}{\sqrt{p_k p_l}},

which costs :math:`O(K^2 r)` per point. The volume element is computed from the singular values of
:math:`B` (never by squaring them into :math:`G`): :math:`\tfrac12\log\det G = \sum_i \log s_i`.

Rank-deficient heads (``d > K - 1``, or a rank-deficient centred ``W``). The null space of :math:`G(z)` is
:math:`\{v : Wv \in \mathrm{span}(\mathbf 1)\}`, the directions that shift every logit equally; it does not
depend on :math:`z`. :math:`p` is therefore a function of the projection :math:`y = V_r^\top z` onto the
row space of the centred weights :math:`W - \mathbf{1}\bar W^\top` (rank :math:`r \le \min(d, K-1)`), and
every quantity here is that of the :math:`r`-dimensional Riemannian manifold in the coordinates
:math:`y` ("the range of :math:`G`"): the log-volume is :math:`\tfrac12\log\mathrm{pdet}\,G`, the scalar
curvature that of the quotient, sectional curvature is defined for planes whose projection is 2-dimensional.
The rank :math:`r` is reported (:attr:`FisherPointwise.range_rank`, summary key ``fisher_rank``).

Manifold heads (ball MLR, cosine head, any differentiable ``logits_fn``): :func:`fisher_pointwise_autograd`
and :func:`sectional_curvature_autograd` use autograd Jacobians and Hessians of
:math:`\phi(z) = 2\sqrt{p(z)} = 2\exp(\tfrac12\log\mathrm{softmax}(f(z)))` (``torch.func``, vectorised
with ``vmap``). :math:`G = J_\phi^\top J_\phi = J_f^\top(\mathrm{diag}\,p - pp^\top)J_f`, and the curvature
follows from the Gauss equation for the image of :math:`\phi` in flat :math:`\mathbb{R}^K`: with the
second fundamental form :math:`\mathrm{II}(u,v) = (I - P)\,D^2\phi(u,v)`,

.. math::

    K(u,v) = \frac{\langle \mathrm{II}(u,u), \mathrm{II}(v,v)\rangle - |\mathrm{II}(u,v)|^2}
                  {|u|_G^2|v|_G^2 - \langle u,v\rangle_G^2},
    \qquad R = \Big|\sum_a \mathrm{II}(e_a,e_a)\Big|^2 - \sum_{a,b}|\mathrm{II}(e_a,e_b)|^2.

This holds wherever :math:`J_\phi` has locally constant rank (then the image is an immersed submanifold and
:math:`D^2\phi(u,v)` has normal part :math:`\mathrm{II}(J_\phi u, J_\phi v)` for all :math:`u, v`), which is
how a head with a :math:`z`-dependent null direction (the radial direction of a cosine head) is handled: the
quantities are those of the image, computed in the range of :math:`G(z)` at each point, with a per-point
numerical rank. Latents on ``geoopt.Sphere`` are handled by evaluating the head at :math:`z/\|z\|`, which
restricts the metric to the tangent spaces of the sphere. For a linear head this route agrees with the closed
forms (tested).

Numerics. Everything is float64. A point whose smallest class probability is below ``min_prob`` is masked:
its log-volume and curvatures are NaN in the per-point arrays and excluded from summaries, and the masked
fraction is reported. The curvature formulas divide by :math:`\sqrt{p_k p_l}`; their absolute error grows
like :math:`K^2 \cdot 10^{-16}/\min p` (measured: about :math:`10^{-7}` at :math:`\min p = 10^{-8}` for
:math:`K = 10`), hence the default ``min_prob = 1e-8``. The trace :math:`\mathrm{tr}\,G = \sum_a p_a|c_a|^2`
is well conditioned and is reported at every point. Very confident networks (collapsed latents far from the
decision boundaries) can have every point masked; the summary then reports NaN for the masked means and a
masked fraction of 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import geoopt
import numpy as np
import torch
from torch.func import jacfwd, jacrev, vmap

from lpc_geom.analysis._validation import (
    SmallSubsetWarning,
    UndefinedMetricError,
    check_array,
    check_bool,
    check_curvature,
    check_int,
    check_latents,
    check_real,
    check_seed,
    encode_labels,
    small_subset_note,
)
from lpc_geom.analysis.transport import check_points_on_manifold

__all__ = [
    "DEFAULT_MIN_PROB",
    "RANK_RTOL",
    "FisherPointwise",
    "class_probabilities",
    "fisher_pointwise",
    "fisher_pointwise_autograd",
    "fisher_rao_distance",
    "fisher_summary",
    "pullback_metric",
    "pullback_metric_autograd",
    "sectional_curvature",
    "sectional_curvature_autograd",
    "third_cumulant",
]

DEFAULT_MIN_PROB = 1e-8
"""Points whose smallest class probability is below this are masked (see the module notes)."""

RANK_RTOL = 1e-10
"""Singular values below ``RANK_RTOL`` times the largest count as zero (classifier rank, per-point rank)."""

_DTYPE = torch.float64
_DEFAULT_CHUNK = 1024
_DEFAULT_AUTOGRAD_CHUNK = 256
_PLANE_RTOL = 1e-10


@dataclass(frozen=True)
class FisherPointwise:
    """Per-point Fisher quantities (numpy arrays, float64).

    Attributes
    ----------
    probs : ndarray, shape (N, K)
        Predictive distributions :math:`p(z_i)`.
    trace : ndarray, shape (N,)
        :math:`\\mathrm{tr}\\, G(z_i)`; defined at every point.
    logvol : ndarray, shape (N,)
        :math:`\\tfrac12 \\log \\mathrm{pdet}\\, G(z_i) = \\sum_{i \\le r} \\log s_i(B)`, the log of the
        Riemannian volume element in the range of :math:`G`; NaN at masked points.
    rank : ndarray of int, shape (N,)
        Numerical rank of :math:`G(z_i)` (singular values of :math:`B` above ``RANK_RTOL`` times the
        largest). Masked points may show a lower rank than :attr:`range_rank`.
    scalar_curvature : ndarray, shape (N,) or None
        Scalar curvature (sum of sectional curvatures over ordered pairs of a :math:`G`-orthonormal
        frame of the range); NaN at masked points; exactly 0 where the rank is 1 (no 2-planes).
        None when not requested.
    masked : ndarray of bool, shape (N,)
        True where :math:`\\min_k p_k(z_i) <` ``min_prob``.
    range_rank : int
        Linear head: rank :math:`r` of the centred classifier weights (the dimension of the manifold the
        latents parametrise). Autograd path: the largest per-point rank.
    dim : int
        Latent dimension :math:`d`.
    """

    probs: np.ndarray
    trace: np.ndarray
    logvol: np.ndarray
    rank: np.ndarray
    scalar_curvature: np.ndarray | None
    masked: np.ndarray
    range_rank: int
    dim: int


# ----------------------------------------------------------------------------------------------------------
# input handling


def _latents(latents) -> torch.Tensor:
    """Validated float64 CPU latents (N >= 1, any d >= 1): :func:`~lpc_geom.analysis._validation.check_latents`."""
    return check_latents(latents, min_dim=1, min_samples=1)[0].cpu()


def _check_linear(latents, W, b) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z = _latents(latents)
    Wt = check_array(W, "W", 2)
    K, d = Wt.shape
    if K < 2:
        raise ValueError(f"W must have at least 2 rows (classes), got shape {tuple(Wt.shape)}")
    if z.shape[1] != d:
        raise ValueError(f"latents have dimension {z.shape[1]} but W has {d} columns")
    if b is None:
        bt = torch.zeros(K, dtype=_DTYPE)
    else:
        bt = check_array(b, "b", 1)
        if bt.shape[0] != K:
            raise ValueError(f"b has {bt.shape[0]} entries but W has {K} rows")
    return z, Wt, bt


def _check_min_prob(min_prob: float) -> float:
    return check_real(min_prob, "min_prob", low=0.0, high=1.0, high_open=True)


def _chunks(n: int, size: int) -> Iterator[slice]:
    size = check_int(size, "chunk_size", minimum=1)
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _range_basis(W: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (d, r) of the row space of the centred weights; raises if r = 0."""
    Wc = W - W.mean(dim=0, keepdim=True)
    _, s, Vh = torch.linalg.svd(Wc, full_matrices=False)
    if s[0] == 0:
        raise UndefinedMetricError(
            "the classifier is constant in z (all rows of W are equal): the Fisher metric is zero everywhere"
        )
    r = int((s > RANK_RTOL * s[0]).sum())
    return Vh[:r].T.contiguous()


def _centred_rows(p: torch.Tensor, Wr: torch.Tensor) -> torch.Tensor:
    r"""Rows :math:`c_k = W_k - W^\top p`, shape (n, K, r).

    For the most probable class :math:`W_k - W^\top p` cancels to a vector of size :math:`1 - p_k`, so that
    row is formed as :math:`\sum_{j \ne k} p_j (W_k - W_j)` instead.
    """
    C = Wr.unsqueeze(0) - (p @ Wr).unsqueeze(1)
    top = p.argmax(dim=1)
    Wtop = Wr[top]
    C[torch.arange(p.shape[0]), top] = torch.einsum("nj,njr->nr", p, Wtop.unsqueeze(1) - Wr.unsqueeze(0))
    return C


def _projector_scalar_curvature(U: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    r""":math:`\tfrac14\sum_{kl} P_{kl}(P_{kl}^2 - P_{kk}P_{ll})/\sqrt{p_kp_l}` with :math:`P = UU^\top`."""
    P = U @ U.transpose(-1, -2)
    Pd = torch.diagonal(P, dim1=-2, dim2=-1)
    sq = p.sqrt()
    terms = P * (P.square() - Pd.unsqueeze(-1) * Pd.unsqueeze(-2)) / (sq.unsqueeze(-1) * sq.unsqueeze(-2))
    return 0.25 * terms.sum(dim=(-1, -2))


def _numerical_rank(s: torch.Tensor) -> torch.Tensor:
    return (s > RANK_RTOL * s[..., :1]).sum(dim=-1)


def _probs_linear(z: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.softmax(z @ W.T + b, dim=-1)


# ----------------------------------------------------------------------------------------------------------
# linear head: closed forms


def class_probabilities(latents, W, b=None) -> np.ndarray:
    """Predictive distributions :math:`\\mathrm{softmax}(Wz_i + b)` in float64.

    Parameters
    ----------
    latents : array_like, shape (N, d)
    W : array_like, shape (K, d)
    b : array_like, shape (K,), optional
        Zero when omitted.

    Returns
    -------
    ndarray, shape (N, K)
    """
    z, Wt, bt = _check_linear(latents, W, b)
    return _probs_linear(z, Wt, bt).numpy()


def pullback_metric(latents, W, b=None) -> np.ndarray:
    r"""Pull-back Fisher metric :math:`G(z) = W^\top(\mathrm{diag}\,p - pp^\top)W` at each latent.

    Computed as :math:`B^\top B` with :math:`B_a = \sqrt{p_a}(W_a - W^\top p)`, which is symmetric positive
    semi-definite by construction. It equals the Hessian of :math:`\mathrm{logsumexp}(Wz + b)` in
    :math:`z`; its rank is at most :math:`\min(d, K - 1)`.

    Parameters
    ----------
    latents : array_like, shape (N, d)
    W : array_like, shape (K, d)
    b : array_like, shape (K,), optional

    Returns
    -------
    ndarray, shape (N, d, d), float64
    """
    z, Wt, bt = _check_linear(latents, W, b)
    p = _probs_linear(z, Wt, bt)
    B = p.sqrt().unsqueeze(-1) * _centred_rows(p, Wt)
    return (B.transpose(-1, -2) @ B).numpy()


def third_cumulant(latents, W, b=None) -> np.ndarray:
    r"""Third cumulant tensor :math:`T_{ijk} = \sum_a p_a c_{ai}c_{aj}c_{ak}`, :math:`c_a = W_a - W^\top p`.

    :math:`T = \partial G`: :math:`T_{ijk} = \partial_k G_{ij}`, the third derivative of
    :math:`\mathrm{logsumexp}(Wz + b)`. Memory is :math:`N d^3` floats.

    Parameters
    ----------
    latents : array_like, shape (N, d)
    W : array_like, shape (K, d)
    b : array_like, shape (K,), optional

    Returns
    -------
    ndarray, shape (N, d, d, d), float64, symmetric in its last three indices.
    """
    z, Wt, bt = _check_linear(latents, W, b)
    p = _probs_linear(z, Wt, bt)
    C = _centred_rows(p, Wt)
    return torch.einsum("nk,nki,nkj,nkl->nijl", p, C, C, C).numpy()


def fisher_pointwise(
    latents,
    W,
    b=None,
    *,
    min_prob: float = DEFAULT_MIN_PROB,
    curvature: bool = True,
    chunk_size: int = _DEFAULT_CHUNK,
) -> FisherPointwise:
    r"""Rank, trace, log-volume and scalar curvature of the Fisher metric of a linear softmax head.

    For :math:`p = \mathrm{softmax}(Wz + b)`, with :math:`B = (\mathrm{diag}\sqrt p - \sqrt p\,p^\top)W
    = U S V^\top` restricted to the range coordinates (module notes):

    - trace :math:`\mathrm{tr}\,G = \sum_i s_i^2`;
    - log-volume :math:`\tfrac12\log\mathrm{pdet}\,G = \sum_{i \le r}\log s_i`;
    - scalar curvature :math:`R = \tfrac14\sum_{kl}P_{kl}(P_{kl}^2 - P_{kk}P_{ll})/\sqrt{p_kp_l}`,
      :math:`P = UU^\top`. For :math:`d = K - 1` and an injective centred :math:`W` this is
      :math:`(K-1)(K-2)/4` everywhere (the radius-2 sphere); for :math:`r = 1` (e.g. :math:`K = 2`) it is 0.

    Parameters
    ----------
    latents : array_like, shape (N, d)
    W : array_like, shape (K, d)
        Classifier weights, K >= 2. A centred ``W`` of rank :math:`r < d` is handled in its row space.
    b : array_like, shape (K,), optional
    min_prob : float
        Mask threshold on :math:`\min_k p_k` (module notes).
    curvature : bool
        Compute the scalar curvature (cost :math:`O(K^2 r)` per point).
    chunk_size : int
        Points processed per batch (bounds memory at about ``chunk_size * K * K`` floats).

    Returns
    -------
    FisherPointwise

    Raises
    ------
    ValueError
        Bad shapes or non-finite input.
    UndefinedMetricError
        A classifier that is constant in ``z`` (all rows of ``W`` equal: the metric is zero); a
        ``ValueError`` subclass.
    """
    min_prob = _check_min_prob(min_prob)
    curvature = check_bool(curvature, "curvature")
    z, Wt, bt = _check_linear(latents, W, b)
    basis = _range_basis(Wt)
    r = basis.shape[1]
    Wr = Wt @ basis
    N = z.shape[0]
    probs = torch.empty(N, Wt.shape[0], dtype=_DTYPE)
    trace = torch.empty(N, dtype=_DTYPE)
    logvol = torch.full((N,), float("nan"), dtype=_DTYPE)
    rank = torch.empty(N, dtype=torch.int64)
    scal = torch.full((N,), float("nan"), dtype=_DTYPE) if curvature else None
    for sl in _chunks(N, chunk_size):
        p = _probs_linear(z[sl], Wt, bt)
        U, s, _ = torch.linalg.svd(p.sqrt().unsqueeze(-1) * _centred_rows(p, Wr), full_matrices=False)
        ok = p.min(dim=-1).values >= min_prob
        probs[sl] = p
        trace[sl] = s.square().sum(dim=-1)
        rank[sl] = _numerical_rank(s)
        logvol[sl] = torch.where(ok, s.log().sum(dim=-1), float("nan"))
        if scal is not None:
            part = torch.full((p.shape[0],), float("nan"), dtype=_DTYPE)
            if r == 1:
                part[ok] = 0.0
            else:
                part[ok] = _projector_scalar_curvature(U[ok], p[ok])
            scal[sl] = part
    masked = probs.min(dim=-1).values < min_prob
    return FisherPointwise(
        probs=probs.numpy(),
        trace=trace.numpy(),
        logvol=logvol.numpy(),
        rank=rank.numpy(),
        scalar_curvature=None if scal is None else scal.numpy(),
        masked=masked.numpy(),
        range_rank=r,
        dim=z.shape[1],
    )


def _orthonormalise(a: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram-Schmidt on pairs along the last axis."""
    a = a / a.norm(dim=-1, keepdim=True)
    c = c - (c * a).sum(dim=-1, keepdim=True) * a
    return a, c / c.norm(dim=-1, keepdim=True)


def _gaussian_pairs(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard Gaussian arrays; orthonormalised they give uniformly random 2-frames."""
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(shape, generator=gen, dtype=_DTYPE),
        torch.randn(shape, generator=gen, dtype=_DTYPE),
    )


def _check_planes(planes, N: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(planes, tuple | list) and len(planes) == 2):
        raise ValueError("planes must be a pair (u, v) of arrays of shape (d,) or (N, d)")
    out = []
    for name, x in zip(("u", "v"), planes, strict=True):
        t = check_array(x, name)
        if t.ndim == 1:
            t = t.expand(N, -1)
        if t.ndim != 2 or t.shape != (N, d):
            raise ValueError(f"plane vector {name} must have shape ({d},) or ({N}, {d}), got {tuple(t.shape)}")
        out.append(t)
    return out[0], out[1]


def _plane_area_ok(
    u: torch.Tensor, v: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Whether (u, v) span a 2-plane: Gram determinant above ``_PLANE_RTOL`` |u|^2 |v|^2.

    ``ref`` gives the vectors the norms are taken from (the unprojected plane, so that a plane whose
    projection is rounding noise is rejected); default (u, v).
    """
    ru, rv = (u, v) if ref is None else ref
    uu, vv, uv = (u * u).sum(-1), (v * v).sum(-1), (u * v).sum(-1)
    scale = (ru * ru).sum(-1) * (rv * rv).sum(-1)
    return (scale > 0) & (uu * vv - uv.square() > _PLANE_RTOL * scale)


def _sectional_from_weights(
    alpha: torch.Tensor, beta: torch.Tensor, p: torch.Tensor, U: torch.Tensor
) -> torch.Tensor:
    r"""Closed-form sectional curvature from :math:`\alpha_k = c_k\cdot u`, :math:`\beta_k = c_k\cdot v`.

    :math:`T(u,v)^\top G^{+} T(u,v) = w_{uv}^\top P w_{uv}` with :math:`w_{uv,k} = \sqrt{p_k}\alpha_k\beta_k`.
    Shapes: alpha, beta (n, P, K); p (n, K); U (n, K, r). Returns (n, P).
    """
    sq = p.sqrt().unsqueeze(1)
    w_uv = sq * alpha * beta
    w_uu = sq * alpha.square()
    w_vv = sq * beta.square()
    Ut = U.unsqueeze(1)

    def proj_inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((x.unsqueeze(-2) @ Ut).squeeze(-2) * (y.unsqueeze(-2) @ Ut).squeeze(-2)).sum(-1)

    num = proj_inner(w_uv, w_uv) - proj_inner(w_uu, w_vv)
    pu = p.unsqueeze(1)
    guu, gvv, guv = (pu * alpha.square()).sum(-1), (pu * beta.square()).sum(-1), (pu * alpha * beta).sum(-1)
    return 0.25 * num / (guu * gvv - guv.square())


def sectional_curvature(
    latents,
    W,
    b=None,
    *,
    planes=None,
    n_planes: int = 1,
    seed: int = 0,
    min_prob: float = DEFAULT_MIN_PROB,
    chunk_size: int = _DEFAULT_CHUNK,
) -> np.ndarray:
    r"""Sectional curvature of the pull-back Fisher metric of a linear softmax head.

    .. math::

        K(u, v) = \frac14\,\frac{T(u,v)^\top G^{+} T(u,v) - T(u,u)^\top G^{+} T(v,v)}
                               {|u|_G^2|v|_G^2 - \langle u,v\rangle_G^2}

    (the Hessian-metric formula with :math:`G^{-1}` taken in the range of :math:`G`, module notes).
    Evaluated through :math:`T(u,v)^\top G^+ T(u,v) = \sum_{kl} w_k P_{kl} w_l`,
    :math:`w_k = \sqrt{p_k}(c_k\cdot u)(c_k\cdot v)`, without forming :math:`T` or :math:`G^{-1}`.

    Parameters
    ----------
    latents : array_like, shape (N, d)
    W : array_like, shape (K, d)
    b : array_like, shape (K,), optional
    planes : pair (u, v) of array_like, each of shape (d,) or (N, d), optional
        Planes in latent coordinates. Only their projections onto the range of :math:`G` matter; those must
        span a 2-plane. When omitted, ``n_planes`` planes per point are drawn uniformly from the
        :math:`G`-orthonormal 2-frames of the range (seeded by ``seed``).
    n_planes : int
        Number of random planes per point (ignored when ``planes`` is given).
    seed : int
    min_prob : float
        Mask threshold; masked points get NaN.
    chunk_size : int

    Returns
    -------
    ndarray
        Shape (N,) when ``planes`` is given, else (N, n_planes). NaN at masked points.

    Raises
    ------
    ValueError
        A given plane projects to a line or a point in the range of :math:`G`.
    UndefinedMetricError
        The metric has rank < 2 (no 2-planes, e.g. K = 2), or the classifier is constant in ``z``.
    """
    min_prob = _check_min_prob(min_prob)
    z, Wt, bt = _check_linear(latents, W, b)
    basis = _range_basis(Wt)
    r = basis.shape[1]
    if r < 2:
        raise UndefinedMetricError(
            f"the Fisher metric has rank {r} (K = {Wt.shape[0]}): there are no 2-planes to take a "
            "sectional curvature of"
        )
    N, d = z.shape
    if planes is not None:
        u_in, v_in = _check_planes(planes, N, d)
        u, v = u_in @ basis, v_in @ basis
        bad = ~_plane_area_ok(u, v, (u_in, v_in))
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} plane(s) do not span a 2-plane in the range of the Fisher metric "
                f"(rank {r}): their projections onto the row space of the centred W are linearly dependent"
            )
    else:
        n_planes, seed = check_int(n_planes, "n_planes", minimum=1), check_seed(seed)
    Wr = Wt @ basis
    n_out = 1 if planes is not None else n_planes
    out = torch.full((N, n_out), float("nan"), dtype=_DTYPE)
    frame = None if planes is not None else _orthonormalise(*_gaussian_pairs((N, n_planes, r), seed))
    for sl in _chunks(N, chunk_size):
        p = _probs_linear(z[sl], Wt, bt)
        ok = p.min(dim=-1).values >= min_prob
        if not ok.any():
            continue
        p = p[ok]
        C = _centred_rows(p, Wr)
        U, s, Vh = torch.linalg.svd(p.sqrt().unsqueeze(-1) * C, full_matrices=False)
        if frame is None:
            uu, vv = u[sl][ok].unsqueeze(1), v[sl][ok].unsqueeze(1)
        else:
            # frame coordinates a -> reduced latent vector V S^{-1} a
            to_latent = Vh.transpose(-1, -2) / s.unsqueeze(-2)
            uu = frame[0][sl][ok] @ to_latent.transpose(-1, -2)
            vv = frame[1][sl][ok] @ to_latent.transpose(-1, -2)
        alpha = uu @ C.transpose(-1, -2)
        beta = vv @ C.transpose(-1, -2)
        block = out[sl]
        block[ok] = _sectional_from_weights(alpha, beta, p, U)
        out[sl] = block
    return (out[:, 0] if planes is not None else out).numpy()


# ----------------------------------------------------------------------------------------------------------
# generic heads: autograd


def _latent_chart(manifold) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Map composed before the head: None for open subsets of R^d, normalisation for the sphere."""
    if manifold is None or isinstance(manifold, geoopt.Euclidean):
        return None
    check_curvature(manifold)
    if isinstance(manifold, geoopt.Stereographic) and float(manifold.k) < 0:
        return None
    if isinstance(manifold, geoopt.Sphere) and manifold.projector is None:
        return lambda x: x / x.norm(dim=-1, keepdim=True)
    raise ValueError(
        f"Fisher geometry supports Euclidean, Poincaré-ball and geoopt.Sphere latents, not {manifold.name}"
    )


def _check_autograd_input(latents, logits_fn, manifold) -> tuple[torch.Tensor, int]:
    z = _latents(latents)
    _latent_chart(manifold)
    check_points_on_manifold(z, manifold, "latents")
    if not callable(logits_fn):
        raise TypeError("logits_fn must be callable: (n, d) float64 tensor -> (n, K) logits")
    with torch.no_grad():
        out = logits_fn(z[:1])
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise ValueError("logits_fn must map a (n, d) tensor to a (n, K) tensor of logits")
    if out.dtype != _DTYPE:
        raise ValueError(
            f"logits_fn returned {out.dtype} for float64 input; pass a float64 copy of the head "
            "(e.g. copy.deepcopy(head).double()) so that the geometry is computed in float64"
        )
    K = out.shape[1]
    if K < 2:
        raise ValueError(f"logits_fn must return at least 2 logits, got {K}")
    return z, K


def _phi_derivatives(
    z: torch.Tensor, logits_fn: Callable[[torch.Tensor], torch.Tensor], hessian: bool, manifold
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    r"""log p (n, K), Jacobian (n, K, d) and optionally Hessian (n, K, d, d) of :math:`\phi = 2\sqrt p`.

    On the sphere the head is evaluated at :math:`z/\|z\|`: at :math:`\|z\| = 1` the differential of the
    normalisation is the projection onto the tangent space, so the metric is the pull-back to the sphere
    (radial direction null) and the image, hence its curvature, is that of the sphere's points.
    """
    chart = _latent_chart(manifold)

    def phi(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if chart is not None:
            x = chart(x)
        logp = torch.log_softmax(logits_fn(x.unsqueeze(0)).squeeze(0), dim=-1)
        return 2.0 * torch.exp(0.5 * logp), logp

    jac_phi = jacrev(phi, has_aux=True)
    if not hessian:
        J, logp = vmap(jac_phi)(z)
        H = None
    else:

        def jac_with_aux(x: torch.Tensor):
            J, logp = jac_phi(x)
            return J, (J, logp)

        H, (J, logp) = vmap(jacfwd(jac_with_aux, has_aux=True))(z)
    # log p = -inf (a probability that underflowed) is legitimate and gets masked; NaN is not
    if torch.isnan(logp).any() or not torch.isfinite(J).all():
        raise ValueError(
            "logits_fn produced non-finite logits or derivatives "
            "(latents outside the head's domain, e.g. outside the Poincaré ball?)"
        )
    return logp, J, H


def pullback_metric_autograd(
    latents, logits_fn, *, manifold=None, chunk_size: int = _DEFAULT_AUTOGRAD_CHUNK
) -> np.ndarray:
    r"""Pull-back Fisher metric :math:`G = J^\top(\mathrm{diag}\,p - pp^\top)J` of a differentiable head.

    :math:`J` is the Jacobian of the logits in :math:`z`; computed as :math:`J_\phi^\top J_\phi` with
    :math:`\phi = 2\sqrt{p}` (``torch.func.jacrev`` under ``vmap``).

    Parameters
    ----------
    latents : array_like, shape (N, d)
    logits_fn : callable
        Maps a float64 tensor of shape (n, d) to logits (n, K); must be composed of torch operations
        (``torch.func`` transforms it), e.g. a manifold head converted with ``.double()``.
    manifold : geoopt.Manifold, optional
        Latent geometry; latents are checked to lie on it (``ValueError`` for points outside the Poincaré
        ball, off the sphere). Quantities are computed in the latents' own coordinates: curvatures are
        intrinsic, the log-volume is relative to Lebesgue measure in those coordinates. On
        ``geoopt.Sphere`` the head is evaluated at :math:`z/\|z\|`, so the metric is that of the sphere's
        tangent spaces (the radial direction is null, rank at most :math:`d - 1`).
    chunk_size : int

    Returns
    -------
    ndarray, shape (N, d, d)
    """
    z, _ = _check_autograd_input(latents, logits_fn, manifold)
    out = torch.empty(z.shape[0], z.shape[1], z.shape[1], dtype=_DTYPE)
    for sl in _chunks(z.shape[0], chunk_size):
        _, J, _ = _phi_derivatives(z[sl], logits_fn, hessian=False, manifold=manifold)
        out[sl] = J.transpose(-1, -2) @ J
    return out.detach().numpy()


def _frame(J: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of J_phi with a per-point rank mask: U (n,K,m), s (n,m), Vh (n,m,d), mask (n,m)."""
    U, s, Vh = torch.linalg.svd(J, full_matrices=False)
    keep = s > RANK_RTOL * s[..., :1]
    return U, s, Vh, keep


def _second_fundamental_form(
    H: torch.Tensor, U: torch.Tensor, keep: torch.Tensor, E: torch.Tensor, F: torch.Tensor
) -> torch.Tensor:
    r""":math:`\mathrm{II}(E_a, F_b) = (I - U_rU_r^\top)\,D^2\phi(E_a, F_b)`, shape (n, K, A, B).

    H (n, K, d, d); U (n, K, m); keep (n, m); E (n, d, A); F (n, d, B).
    """
    D2 = torch.einsum("nkij,nia,njb->nkab", H, E, F)
    Ur = U * keep.unsqueeze(1)
    return D2 - torch.einsum("nkm,nlm,nlab->nkab", Ur, Ur, D2)


def fisher_pointwise_autograd(
    latents,
    logits_fn,
    *,
    manifold=None,
    min_prob: float = DEFAULT_MIN_PROB,
    curvature: bool = True,
    chunk_size: int = _DEFAULT_AUTOGRAD_CHUNK,
) -> FisherPointwise:
    r"""Fisher quantities of a differentiable head (manifold heads) through autograd.

    With :math:`\phi(z) = 2\sqrt{p(z)}` and :math:`J_\phi = USV^\top` (per-point rank :math:`r_i`):
    trace :math:`\sum s_a^2`, log-volume :math:`\sum_{a \le r_i}\log s_a`, and the scalar curvature from the
    Gauss equation in a :math:`G`-orthonormal frame :math:`e_a = V_a/s_a` of the range,
    :math:`R = |\sum_a\mathrm{II}(e_a,e_a)|^2 - \sum_{ab}|\mathrm{II}(e_a,e_b)|^2`,
    :math:`\mathrm{II} = (I - U_rU_r^\top)D^2\phi` (module notes). Valid where the rank is locally constant;
    agrees with :func:`fisher_pointwise` for a linear head.

    Parameters
    ----------
    latents : array_like, shape (N, d)
    logits_fn : callable
        (n, d) float64 tensor -> (n, K) logits, built from torch operations.
    manifold : geoopt.Manifold, optional
        Latent geometry; latents are checked to lie on it (``ValueError`` for points outside the Poincaré
        ball, off the sphere). Quantities are computed in the latents' own coordinates: curvatures are
        intrinsic, the log-volume is relative to Lebesgue measure in those coordinates. On
        ``geoopt.Sphere`` the head is evaluated at :math:`z/\|z\|`, so the metric is that of the sphere's
        tangent spaces (the radial direction is null, rank at most :math:`d - 1`).
    min_prob : float
        Mask threshold on :math:`\min_k p_k`.
    curvature : bool
        Compute the scalar curvature (needs Hessians: :math:`O(K d^2)` memory per point).
    chunk_size : int
        Points per ``vmap`` batch.

    Returns
    -------
    FisherPointwise
        ``range_rank`` is the largest per-point rank.

    Raises
    ------
    ValueError
        Bad shapes, latents off ``manifold``, a ``logits_fn`` that does not return float64 (n, K) logits, or
        non-finite logits or derivatives (for instance at a latent outside the Poincaré ball).
    """
    min_prob = _check_min_prob(min_prob)
    curvature = check_bool(curvature, "curvature")
    z, K = _check_autograd_input(latents, logits_fn, manifold)
    N, d = z.shape
    probs = torch.empty(N, K, dtype=_DTYPE)
    trace = torch.empty(N, dtype=_DTYPE)
    logvol = torch.full((N,), float("nan"), dtype=_DTYPE)
    rank = torch.empty(N, dtype=torch.int64)
    scal = torch.full((N,), float("nan"), dtype=_DTYPE) if curvature else None
    for sl in _chunks(N, chunk_size):
        logp, J, H = _phi_derivatives(z[sl], logits_fn, hessian=curvature, manifold=manifold)
        p = logp.exp()
        ok = p.min(dim=-1).values >= min_prob
        if H is not None and not torch.isfinite(H[ok]).all():
            raise ValueError("logits_fn produced non-finite second derivatives at unmasked latents")
        U, s, Vh, keep = _frame(J)
        probs[sl] = p
        trace[sl] = s.square().sum(dim=-1)
        rank[sl] = keep.sum(dim=-1)
        logs = torch.where(keep, s.clamp_min(torch.finfo(_DTYPE).tiny).log(), 0.0).sum(dim=-1)
        logvol[sl] = torch.where(ok, logs, float("nan"))
        if scal is not None and ok.any():
            Uo, so, Vho, ko = U[ok], s[ok], Vh[ok], keep[ok]
            E = Vho.transpose(-1, -2) * torch.where(ko, 1.0 / so, 0.0).unsqueeze(-2)
            II = _second_fundamental_form(H[ok], Uo, ko, E, E)
            mean_curv = torch.diagonal(II, dim1=-2, dim2=-1).sum(dim=-1)
            part = torch.full((p.shape[0],), float("nan"), dtype=_DTYPE)
            part[ok] = mean_curv.square().sum(dim=-1) - II.square().sum(dim=(-3, -2, -1))
            scal[sl] = part
    masked = probs.min(dim=-1).values < min_prob
    return FisherPointwise(
        probs=probs.detach().numpy(),
        trace=trace.detach().numpy(),
        logvol=logvol.detach().numpy(),
        rank=rank.numpy(),
        scalar_curvature=None if scal is None else scal.detach().numpy(),
        masked=masked.numpy(),
        range_rank=int(rank.max()),
        dim=d,
    )


def sectional_curvature_autograd(
    latents,
    logits_fn,
    *,
    manifold=None,
    planes=None,
    n_planes: int = 1,
    seed: int = 0,
    min_prob: float = DEFAULT_MIN_PROB,
    chunk_size: int = _DEFAULT_AUTOGRAD_CHUNK,
) -> np.ndarray:
    r"""Sectional curvature of the pull-back Fisher metric of a differentiable head (Gauss equation).

    .. math::

        K(u,v) = \frac{\langle\mathrm{II}(u,u),\mathrm{II}(v,v)\rangle - |\mathrm{II}(u,v)|^2}
                      {|u|_G^2|v|_G^2 - \langle u,v\rangle_G^2},
        \qquad \mathrm{II} = (I - P)\,D^2\phi,\ \phi = 2\sqrt p.

    Parameters
    ----------
    latents : array_like, shape (N, d)
    logits_fn : callable
        (n, d) float64 tensor -> (n, K) logits, built from torch operations.
    manifold : geoopt.Manifold, optional
        Latent geometry; latents are checked to lie on it (``ValueError`` for points outside the Poincaré
        ball, off the sphere). Quantities are computed in the latents' own coordinates: curvatures are
        intrinsic, the log-volume is relative to Lebesgue measure in those coordinates. On
        ``geoopt.Sphere`` the head is evaluated at :math:`z/\|z\|`, so the metric is that of the sphere's
        tangent spaces (the radial direction is null, rank at most :math:`d - 1`).
    planes : pair (u, v) of array_like, each (d,) or (N, d), optional
        Latent-coordinate planes; their images under :math:`J_\phi` must span a 2-plane at every unmasked
        point. When omitted, ``n_planes`` planes per point drawn uniformly from the :math:`G`-orthonormal
        2-frames of the range of :math:`G(z_i)`.
    n_planes, seed, min_prob, chunk_size
        As in :func:`sectional_curvature`.

    Returns
    -------
    ndarray
        (N,) for given planes, else (N, n_planes); NaN at masked points.

    Raises
    ------
    ValueError
        A given plane is degenerate for the metric at an unmasked point, or the errors of
        :func:`fisher_pointwise_autograd`.
    UndefinedMetricError
        Random planes requested at an unmasked point where the metric has rank < 2.
    """
    min_prob = _check_min_prob(min_prob)
    z, K = _check_autograd_input(latents, logits_fn, manifold)
    N, d = z.shape
    if planes is not None:
        u_all, v_all = _check_planes(planes, N, d)
    else:
        n_planes, seed = check_int(n_planes, "n_planes", minimum=1), check_seed(seed)
        frame_a, frame_b = _gaussian_pairs((N, n_planes, min(K, d)), seed)
    n_out = 1 if planes is not None else n_planes
    out = torch.full((N, n_out), float("nan"), dtype=_DTYPE)
    for sl in _chunks(N, chunk_size):
        logp, J, H = _phi_derivatives(z[sl], logits_fn, hessian=True, manifold=manifold)
        ok = logp.exp().min(dim=-1).values >= min_prob
        if not ok.any():
            continue
        J, H = J[ok], H[ok]
        if not torch.isfinite(H).all():
            raise ValueError("logits_fn produced non-finite second derivatives at unmasked latents")
        U, s, Vh, keep = _frame(J)
        if planes is not None:
            u, v = u_all[sl][ok].unsqueeze(1), v_all[sl][ok].unsqueeze(1)
            Ju, Jv = u @ J.transpose(-1, -2), v @ J.transpose(-1, -2)
            if not _plane_area_ok(Ju, Jv).all():
                raise ValueError(
                    "a given plane is degenerate for the Fisher metric at some latents "
                    "(its image under the Jacobian is a line or a point)"
                )
            denom = (Ju * Ju).sum(-1) * (Jv * Jv).sum(-1) - (Ju * Jv).sum(-1).square()
        else:
            if (keep.sum(dim=-1) < 2).any():
                raise UndefinedMetricError("the Fisher metric has rank < 2 at some latents: no 2-planes there")
            mask = keep.unsqueeze(1)
            a, c = _orthonormalise(frame_a[sl][ok] * mask, frame_b[sl][ok] * mask)
            # frame coordinates -> latent vectors: e_a = V_a / s_a on the kept singular directions
            to_latent = Vh.transpose(-1, -2) * torch.where(keep, 1.0 / s, 0.0).unsqueeze(-2)
            u, v = a @ to_latent.transpose(-1, -2), c @ to_latent.transpose(-1, -2)
            denom = torch.ones(u.shape[:2], dtype=_DTYPE)
        II_uu = _normal_hessian(H, U, keep, u, u)
        II_vv = _normal_hessian(H, U, keep, v, v)
        II_uv = _normal_hessian(H, U, keep, u, v)
        res = ((II_uu * II_vv).sum(1) - II_uv.square().sum(1)) / denom
        block = out[sl]
        block[ok] = res
        out[sl] = block
    result = out.detach()
    return (result[:, 0] if planes is not None else result).numpy()


def _normal_hessian(
    H: torch.Tensor, U: torch.Tensor, keep: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    r"""Normal part of :math:`D^2\phi(x_p, y_p)`, shape (n, K, P); H (n, K, d, d), x and y (n, P, d)."""
    D2 = torch.einsum("nkij,npi,npj->nkp", H, x, y)
    Ur = U * keep.unsqueeze(1)
    return D2 - Ur @ (Ur.transpose(-1, -2) @ D2)


# ----------------------------------------------------------------------------------------------------------
# Fisher-Rao distance and the summary


def fisher_rao_distance(p, q) -> np.ndarray:
    r"""Fisher-Rao distance between categorical distributions, :math:`2\arccos\sum_k\sqrt{p_kq_k}`.

    Evaluated in the equivalent chord form :math:`4\arcsin(\tfrac12\|\sqrt p - \sqrt q\|)` (the angle
    between :math:`\sqrt p` and :math:`\sqrt q` on the unit sphere, doubled), which is accurate at all
    distances. This is written here rather than taken from a library: geomstats is not a dependency, and
    geoopt's ``Sphere().dist`` on :math:`\sqrt p` (which gives half the Fisher-Rao distance) clamps the
    cosine to :math:`1 - 10^{-7}` in float64, so it returns :math:`4.5\cdot10^{-4}` for identical points
    (a floor of :math:`8.9\cdot10^{-4}` on the Fisher-Rao distance). Values lie in :math:`[0, \pi]`.

    Parameters
    ----------
    p, q : array_like, shape (..., K)
        Probability vectors (non-negative, summing to 1 within 1e-6); broadcast against each other.

    Returns
    -------
    ndarray, shape the broadcast batch shape (a 0-d array for single vectors).

    Raises
    ------
    ValueError
        Negative entries, rows not summing to 1, or non-finite values.
    """
    pa = np.asarray(p.detach() if isinstance(p, torch.Tensor) else p, dtype=np.float64)
    qa = np.asarray(q.detach() if isinstance(q, torch.Tensor) else q, dtype=np.float64)
    for name, x in (("p", pa), ("q", qa)):
        if x.ndim == 0 or not np.isfinite(x).all() or (x < 0).any():
            raise ValueError(f"{name} must be finite, non-negative probability vectors")
        if not np.allclose(x.sum(axis=-1), 1.0, rtol=0.0, atol=1e-6):
            raise ValueError(f"{name} must sum to 1 along the last axis")
    chord = np.linalg.norm(np.sqrt(pa) - np.sqrt(qa), axis=-1)
    # sqrt(p), sqrt(q) lie in the positive orthant of the unit sphere, so the chord is at most sqrt(2) and the
    # distance at most pi; rounding of a chord of exactly sqrt(2) (disjoint supports) would give pi + 1 ulp.
    return np.minimum(4.0 * np.arcsin(np.minimum(0.5 * chord, 1.0)), np.pi)


def fisher_summary(
    latents,
    W=None,
    b=None,
    *,
    labels,
    logits_fn=None,
    manifold=None,
    min_prob: float = DEFAULT_MIN_PROB,
    chunk_size: int | None = None,
) -> dict[str, float]:
    r"""Fisher-geometry summary of a classifier at its latents (for ``lpc_geom.analyze``).

    Give either the linear head ``(W, b)`` (closed forms, :func:`fisher_pointwise`) or ``logits_fn`` for a
    manifold head (autograd, :func:`fisher_pointwise_autograd`).

    Keys (all floats):

    ``fisher_logvol_mean``
        Mean over unmasked points of :math:`\tfrac12\log\mathrm{pdet}\,G(z_i)`.
    ``fisher_trace_mean``
        Mean over all points of :math:`\mathrm{tr}\,G(z_i)`.
    ``fisher_scalar_curvature``
        Mean over unmasked points of the scalar curvature (:math:`(K-1)(K-2)/4` for :math:`d = K-1`;
        0 when the rank is 1, e.g. :math:`K = 2`).
    ``fisher_scalar_curvature_std``
        Standard deviation over unmasked points of the scalar curvature (its spread).
    ``fisher_masked_fraction``
        Fraction of points with :math:`\min_k p_k <` ``min_prob`` (excluded from the two masked means).
    ``fisher_rank``
        Rank :math:`r` of the metric, the dimension of the manifold the latents parametrise; below
        :math:`d` when the head is rank-deficient (:math:`d > K - 1`), in which case the log-volume and
        curvature are those of the range of :math:`G` (module notes). Autograd path: largest per-point rank.
    ``fisher_rao_classmean_min``, ``fisher_rao_classmean_mean``
        Minimum and mean over pairs of classes of the Fisher-Rao distance
        :math:`2\arccos\sum_k\sqrt{\bar p_{c,k}\bar p_{c',k}}` between class-mean predictive distributions
        :math:`\bar p_c = \mathrm{mean}_{i: y_i = c}\,p(z_i)` (classes present in ``labels``); in
        :math:`[0, \pi]`, :math:`\pi` for perfectly separated confident classes.

    The masked means are NaN when every point is masked (``fisher_masked_fraction == 1``), and come with a
    :class:`~lpc_geom.analysis._validation.SmallSubsetWarning` when fewer than 10 % of the points are
    unmasked (:data:`~lpc_geom.analysis._validation.SMALL_SUBSET_FRACTION`).

    Parameters
    ----------
    latents : array_like, shape (N, d)
    W : array_like, shape (K, d), optional
        Linear classifier weights (exclusive with ``logits_fn``).
    b : array_like, shape (K,), optional
    labels : array_like, shape (N,)
        True labels (integers, integral floats, booleans or strings); at least two distinct classes,
        checked by :func:`~lpc_geom.analysis._validation.encode_labels`.
    logits_fn : callable, optional
        (n, d) float64 tensor -> (n, K) logits of a manifold head (exclusive with ``W``).
    manifold : geoopt.Manifold, optional
        Latent geometry of a ``logits_fn`` head (see :func:`fisher_pointwise_autograd`).
    min_prob : float
        Mask threshold on :math:`\min_k p_k` (module notes).
    chunk_size : int, optional
        Points per batch; defaults to 1024 (linear) or 256 (autograd).

    Returns
    -------
    dict[str, float]

    Raises
    ------
    ValueError
        Neither or both of ``W`` and ``logits_fn``, bad shapes, fewer than two classes, or the errors of the
        pointwise functions.
    """
    if (W is None) == (logits_fn is None):
        raise ValueError("give exactly one of W (linear head) and logits_fn (differentiable head)")
    if logits_fn is None and manifold is not None:
        raise ValueError("manifold is only used with logits_fn (a linear head acts on Euclidean latents)")
    if logits_fn is not None and b is not None:
        raise ValueError("b is only used with W; fold the bias into logits_fn")
    if W is not None:
        pw = fisher_pointwise(
            latents, W, b, min_prob=min_prob, chunk_size=chunk_size or _DEFAULT_CHUNK, curvature=True
        )
    else:
        pw = fisher_pointwise_autograd(
            latents,
            logits_fn,
            manifold=manifold,
            min_prob=min_prob,
            chunk_size=chunk_size or _DEFAULT_AUTOGRAD_CHUNK,
        )
    enc = encode_labels(labels, pw.probs.shape[0])
    counts = np.bincount(enc.codes, minlength=enc.n_classes)
    mean_p = np.zeros((enc.n_classes, pw.probs.shape[1]))
    np.add.at(mean_p, enc.codes, pw.probs)
    mean_p /= counts[:, None]
    mean_p /= mean_p.sum(axis=1, keepdims=True)  # removes rounding drift of the averaged rows
    fr = fisher_rao_distance(mean_p[:, None, :], mean_p[None, :, :])
    pairs = fr[np.triu_indices(enc.n_classes, k=1)]
    valid = ~pw.masked
    n_valid = int(valid.sum())
    curv = pw.scalar_curvature[valid]
    note = small_subset_note(
        n_valid, valid.size, "points", f"the others have min_k p_k < min_prob = {min_prob:g} and are masked"
    )
    if note is not None:
        warnings.warn(
            f"fisher_logvol_mean, fisher_scalar_curvature, fisher_scalar_curvature_std: {note}",
            SmallSubsetWarning,
            stacklevel=2,
        )
    return {
        "fisher_logvol_mean": float(pw.logvol[valid].mean()) if n_valid else float("nan"),
        "fisher_trace_mean": float(pw.trace.mean()),
        "fisher_scalar_curvature": float(curv.mean()) if n_valid else float("nan"),
        "fisher_scalar_curvature_std": float(curv.std()) if n_valid else float("nan"),
        "fisher_masked_fraction": float(1.0 - n_valid / valid.size),
        "fisher_rank": float(pw.range_rank),
        "fisher_rao_classmean_min": float(pairs.min()),
        "fisher_rao_classmean_mean": float(pairs.mean()),
    }
