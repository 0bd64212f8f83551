r"""Closed forms for a linear softmax head :math:`p = \mathrm{softmax}(Wz + b)` (:mod:`lpc_geom.analysis.fisher`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from lpc_geom.analysis._validation import UndefinedMetricError, check_array, check_bool, check_int, check_seed
from lpc_geom.analysis.fisher import _common as shared
from lpc_geom.analysis.fisher._common import DEFAULT_MIN_PROB, FisherPointwise
from lpc_geom.analysis.fisher._docs import share_docs

__all__ = [
    "class_probabilities",
    "fisher_pointwise",
    "pullback_metric",
    "sectional_curvature",
    "third_cumulant",
]


def _check_linear(latents, W, b) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z = shared._latents(latents)
    Wt = check_array(W, "W", 2)
    K, d = Wt.shape
    if K < 2:
        raise ValueError(f"W must have at least 2 rows (classes), got shape {tuple(Wt.shape)}")
    if z.shape[1] != d:
        raise ValueError(f"latents have dimension {z.shape[1]} but W has {d} columns")
    if b is None:
        bt = torch.zeros(K, dtype=shared._DTYPE)
    else:
        bt = check_array(b, "b", 1)
        if bt.shape[0] != K:
            raise ValueError(f"b has {bt.shape[0]} entries but W has {K} rows")
    return z, Wt, bt


class _RangeFactors(NamedTuple):
    r"""The classifier's fixed factors: ``basis`` (d, r) of the row space of the centred weights
    :math:`W_c = W - \mathbf 1\bar W^\top = Q S_c V^\top`, their ``svals`` :math:`S_c` (r,), and ``complement``
    :math:`R` (K, K - 1 - r), an orthonormal basis of :math:`\mathbf 1^\perp \cap \mathrm{col}(W_c)^\perp`."""

    basis: torch.Tensor
    svals: torch.Tensor
    complement: torch.Tensor


def _range_factors(W: torch.Tensor) -> _RangeFactors:
    """:class:`_RangeFactors` of W (K, d); raises if the centred W is 0 (r = 0)."""
    Wc = W - W.mean(dim=0, keepdim=True)
    U, s, Vh = torch.linalg.svd(Wc, full_matrices=False)
    if s[0] == 0:
        raise UndefinedMetricError(
            "the classifier is constant in z (all rows of W are equal): the Fisher metric is zero everywhere"
        )
    r = int((s > shared.RANK_RTOL * s[0]).sum())
    K = W.shape[0]
    known = torch.cat([U[:, :r], torch.full((K, 1), K**-0.5, dtype=W.dtype)], dim=1)
    full = torch.linalg.svd(known, full_matrices=True)[0]
    return _RangeFactors(Vh[:r].T.contiguous(), s[:r], full[:, r + 1 :].contiguous())


def _range_basis(W: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (d, r) of the row space of the centred weights; raises if r = 0."""
    return _range_factors(W).basis


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
    return _curvature_of_projector(U @ U.transpose(-1, -2), p)


def _curvature_of_projector(P: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    r""":math:`\tfrac14\sum_{kl} P_{kl}(P_{kl}^2 - P_{kk}P_{ll})/\sqrt{p_kp_l}` for projectors ``P`` (n, K, K)."""
    Pd = torch.diagonal(P, dim1=-2, dim2=-1)
    sq = p.sqrt()
    terms = P * (P.square() - Pd.unsqueeze(-1) * Pd.unsqueeze(-2)) / (sq.unsqueeze(-1) * sq.unsqueeze(-2))
    return 0.25 * terms.sum(dim=(-1, -2))


def _closed_form_chunk(
    p: torch.Tensor, logp: torch.Tensor, Wr: torch.Tensor, sq_gaps: torch.Tensor, f: _RangeFactors, curvature: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    r"""Trace, log-volume and (``curvature``) scalar curvature of the points with probabilities ``p`` (n, K),
    from :math:`p` and the classifier's fixed factors alone (no per-point decomposition of :math:`B`).

    With :math:`A = \mathrm{diag}\,p - pp^\top`, :math:`G = W_r^\top A W_r` in the range coordinates and
    :math:`W_c = Q S_c V^\top` (:class:`_RangeFactors`):

    - trace :math:`\sum_k p_k\|w_k - w_t\|^2 - \|\sum_k p'_k w_k\|^2` about the most probable class
      :math:`t`, with :math:`p' = p - e_t` (``sq_gaps`` holds :math:`\|w_k - w_l\|^2`);
    - :math:`\det G = \det(S_c)^2\det(Q^\top A Q)` and, by Jacobi's complementary-minor identity for
      :math:`A` on :math:`\mathbf 1^\perp` (determinant :math:`\mathrm{pdet}\,A = K\prod_k p_k`, inverse
      :math:`P_\perp\mathrm{diag}(1/p)P_\perp`), :math:`\det(Q^\top A Q) = K\prod_k p_k\,\det(R^\top
      \mathrm{diag}(1/p) R)`, so the log-volume is
      :math:`\sum\log s_c + \tfrac12(\log K + \sum_k\log p_k + \log\det R^\top\mathrm{diag}(1/p)R)`;
    - the range of :math:`B` in :math:`\mathbb R^K` is the orthogonal complement of
      :math:`\mathrm{span}\{\sqrt p\} \oplus \mathrm{span}\{\mathrm{diag}(p)^{-1/2}R\}` (two mutually
      orthogonal spaces, as :math:`R \perp \mathbf 1`), so :math:`P = I - \sqrt p\sqrt p^\top - E E^\top`
      with :math:`E = \mathrm{diag}(p)^{-1/2}RL^{-\top}`, :math:`LL^\top = R^\top\mathrm{diag}(1/p)R`. When
      :math:`R` is empty (:math:`r = K - 1`) the curvature sum is exactly :math:`(K-1)(K-2)/4`:
      :math:`P_{kl} = \delta_{kl} - \sqrt{p_kp_l}` gives each pair :math:`k \ne l` the term
      :math:`1 - p_k - p_l`.
    """
    n, K = p.shape
    top = p.argmax(dim=1)
    rows = torch.arange(n)
    shifted = p.clone()
    shifted[rows, top] = 0.0
    shifted[rows, top] = -shifted.sum(dim=1)  # p'_t = -(the sum of the others), not the rounded p_t - 1
    a = shifted @ Wr
    trace = (p * sq_gaps[top]).sum(dim=1) - (a * a).sum(dim=1)
    logvol = f.svals.log().sum() + 0.5 * (math.log(K) + logp.sum(dim=1))
    R = f.complement
    m = R.shape[1]
    if m == 0:
        curv = torch.full((n,), (K - 1) * (K - 2) / 4.0, dtype=p.dtype) if curvature else None
        return trace, logvol, curv
    Y = R.unsqueeze(0) / p.sqrt().unsqueeze(-1)  # diag(p)^(-1/2) R, (n, K, m)
    L = torch.linalg.cholesky(Y.transpose(-1, -2) @ Y)
    logvol = logvol + torch.diagonal(L, dim1=-2, dim2=-1).log().sum(dim=-1)
    if not curvature:
        return trace, logvol, None
    E = torch.linalg.solve_triangular(L, Y.transpose(-1, -2), upper=False).transpose(-1, -2)
    sq = p.sqrt()
    P = torch.eye(K, dtype=p.dtype) - sq.unsqueeze(-1) * sq.unsqueeze(-2) - E @ E.transpose(-1, -2)
    return trace, logvol, _curvature_of_projector(P, p)


def _numerical_rank(s: torch.Tensor) -> torch.Tensor:
    return (s > shared.RANK_RTOL * s[..., :1]).sum(dim=-1)


def _probs_linear(z: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.softmax(z @ W.T + b, dim=-1)


@share_docs
def class_probabilities(latents, W, b=None) -> np.ndarray:
    """Predictive distributions :math:`\\mathrm{softmax}(Wz_i + b)` in float64.

    Parameters
    ----------
    ${linear_head}

    Returns
    -------
    ndarray, shape (N, K)
    """
    z, Wt, bt = _check_linear(latents, W, b)
    return _probs_linear(z, Wt, bt).numpy()


@share_docs
def pullback_metric(latents, W, b=None) -> np.ndarray:
    r"""Pull-back Fisher metric :math:`G(z) = W^\top(\mathrm{diag}\,p - pp^\top)W` at each latent.

    Computed as :math:`B^\top B` with :math:`B_a = \sqrt{p_a}(W_a - W^\top p)`, which is symmetric positive
    semi-definite by construction. It equals the Hessian of :math:`\mathrm{logsumexp}(Wz + b)` in
    :math:`z`; its rank is at most :math:`\min(d, K - 1)`.

    Parameters
    ----------
    ${linear_head}

    Returns
    -------
    ndarray, shape (N, d, d), float64
    """
    z, Wt, bt = _check_linear(latents, W, b)
    p = _probs_linear(z, Wt, bt)
    B = p.sqrt().unsqueeze(-1) * _centred_rows(p, Wt)
    return (B.transpose(-1, -2) @ B).numpy()


@share_docs
def third_cumulant(latents, W, b=None) -> np.ndarray:
    r"""Third cumulant tensor :math:`T_{ijk} = \sum_a p_a c_{ai}c_{aj}c_{ak}`, :math:`c_a = W_a - W^\top p`.

    :math:`T = \partial G`: :math:`T_{ijk} = \partial_k G_{ij}`, the third derivative of
    :math:`\mathrm{logsumexp}(Wz + b)`. Memory is :math:`N d^3` floats.

    Parameters
    ----------
    ${linear_head}

    Returns
    -------
    ndarray, shape (N, d, d, d), float64, symmetric in its last three indices.
    """
    z, Wt, bt = _check_linear(latents, W, b)
    p = _probs_linear(z, Wt, bt)
    C = _centred_rows(p, Wt)
    return torch.einsum("nk,nki,nkj,nkl->nijl", p, C, C, C).numpy()


@share_docs
def fisher_pointwise(
    latents,
    W,
    b=None,
    *,
    min_prob: float = DEFAULT_MIN_PROB,
    curvature: bool = True,
    chunk_size: int = shared._DEFAULT_CHUNK,
) -> FisherPointwise:
    r"""Rank, trace, log-volume and scalar curvature of the Fisher metric of a linear softmax head.

    For :math:`p = \mathrm{softmax}(Wz + b)`, with :math:`B = (\mathrm{diag}\sqrt p - \sqrt p\,p^\top)W
    = U S V^\top` restricted to the range coordinates (module notes):

    - trace :math:`\mathrm{tr}\,G = \sum_i s_i^2`;
    - log-volume :math:`\tfrac12\log\mathrm{pdet}\,G = \sum_{i \le r}\log s_i`;
    - scalar curvature :math:`R = \tfrac14\sum_{kl}P_{kl}(P_{kl}^2 - P_{kk}P_{ll})/\sqrt{p_kp_l}`,
      :math:`P = UU^\top`. For :math:`d = K - 1` and an injective centred :math:`W` this is
      :math:`(K-1)(K-2)/4` everywhere (the radius-2 sphere); for :math:`r = 1` (e.g. :math:`K = 2`) it is 0.

    These are evaluated without decomposing :math:`B` wherever its numerical rank is certainly :math:`r`,
    i.e. where :math:`(s_{c,\min}/s_{c,\max})\sqrt{p_{\min}/p_{\max}}` (a lower bound of
    :math:`s_{\min}/s_{\max}`, with :math:`s_c` the singular values of the centred :math:`W`) exceeds twice
    :data:`~lpc_geom.analysis.fisher._common.RANK_RTOL`: from :math:`p` and fixed factors of :math:`W`
    alone (``_closed_form_chunk``: the trace about the most probable class, the log-volume from
    :math:`\mathrm{pdet}(\mathrm{diag}\,p - pp^\top) = K\prod_k p_k` and Jacobi's complementary-minor
    identity, :math:`P` as the complement of :math:`\sqrt p` and :math:`\mathrm{diag}(p)^{-1/2}R`). The
    other points, far from every decision boundary, take the thin SVD of :math:`B` and its numerical rank.

    Parameters
    ----------
    ${latents}
    W : array_like, shape (K, d)
        Classifier weights, K >= 2. A centred ``W`` of rank :math:`r < d` is handled in its row space.
    b : array_like, shape (K,), optional
        Zero when omitted.
    ${min_prob}
    curvature : bool
        Compute the scalar curvature (cost :math:`O(K^2 (K - 1 - r))` per point in the closed form,
        :math:`O(K^2 r)` where the SVD is taken).
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
    min_prob = shared._check_min_prob(min_prob)
    curvature = check_bool(curvature, "curvature")
    z, Wt, bt = _check_linear(latents, W, b)
    factors = _range_factors(Wt)
    r = factors.basis.shape[1]
    Wr = Wt @ factors.basis
    sq_gaps = torch.cdist(Wr, Wr, compute_mode="donot_use_mm_for_euclid_dist").square()
    # s_min(B) / s_max(B) >= (s_c,min / s_c,max) sqrt(p_min / p_max): above twice the rank tolerance the
    # numerical rank is r for certain, and the closed forms apply; the other points take the SVD of B.
    cond_w = float(factors.svals[-1] / factors.svals[0])
    N = z.shape[0]
    out = shared._PointwiseBuffers(N, Wt.shape[0], curvature)
    for sl in shared._chunks(N, chunk_size):
        logits = z[sl] @ Wt.T + bt
        p = torch.softmax(logits, dim=-1)
        ok = p.min(dim=-1).values >= min_prob
        pmin, pmax = p.aminmax(dim=-1)
        fast = cond_w * (pmin / pmax).sqrt() > 2.0 * shared.RANK_RTOL
        trace = torch.empty(p.shape[0], dtype=p.dtype)
        logvol = torch.empty_like(trace)
        rank = torch.full((p.shape[0],), r, dtype=torch.int64)
        curv = torch.zeros_like(trace) if curvature else None
        if bool(fast.any()):
            tr, lv, cv = _closed_form_chunk(
                p[fast], torch.log_softmax(logits[fast], dim=-1), Wr, sq_gaps, factors, curvature and r > 1
            )
            trace[fast], logvol[fast] = tr, lv
            if cv is not None:
                curv[fast] = cv
        slow = ~fast
        if bool(slow.any()):
            ps = p[slow]
            U, sv, _ = torch.linalg.svd(ps.sqrt().unsqueeze(-1) * _centred_rows(ps, Wr), full_matrices=False)
            trace[slow], logvol[slow], rank[slow] = sv.square().sum(dim=-1), sv.log().sum(dim=-1), _numerical_rank(sv)
            if curvature and r > 1:
                curv[slow] = _projector_scalar_curvature(U, ps)
        out.fill(sl, p, trace, rank, logvol, ok)
        if curvature:
            out.fill_curvature(sl, ok, curv[ok])
    return out.result(min_prob, r, z.shape[1])

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


@share_docs
def sectional_curvature(
    latents,
    W,
    b=None,
    *,
    planes=None,
    n_planes: int = 1,
    seed: int = 0,
    min_prob: float = DEFAULT_MIN_PROB,
    chunk_size: int = shared._DEFAULT_CHUNK,
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
    ${linear_head}
    planes : pair (u, v) of array_like, each of shape (d,) or (N, d), optional
        Planes in latent coordinates. Only their projections onto the range of :math:`G` matter; those must
        span a 2-plane. When omitted, ``n_planes`` planes per point are drawn uniformly from the
        :math:`G`-orthonormal 2-frames of the range (seeded by ``seed``).
    n_planes : int
        Number of random planes per point (ignored when ``planes`` is given).
    seed : int
    ${min_prob}
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
    min_prob = shared._check_min_prob(min_prob)
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
        u_in, v_in = shared._check_planes(planes, N, d)
        u, v = u_in @ basis, v_in @ basis
        bad = ~shared._plane_area_ok(u, v, (u_in, v_in))
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} plane(s) do not span a 2-plane in the range of the Fisher metric "
                f"(rank {r}): their projections onto the row space of the centred W are linearly dependent"
            )
    else:
        n_planes, seed = check_int(n_planes, "n_planes", minimum=1), check_seed(seed)
    Wr = Wt @ basis
    out = shared._PlaneResults(N, planes is not None, n_planes)
    frame = None if planes is not None else shared._orthonormalise(*shared._gaussian_pairs((N, n_planes, r), seed))
    for sl in shared._chunks(N, chunk_size):
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
        out.fill(sl, ok, _sectional_from_weights(alpha, beta, p, U))
    return out.result()
