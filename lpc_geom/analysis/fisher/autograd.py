r"""Any differentiable head through autograd: Jacobians and Hessians of :math:`\phi = 2\sqrt{p}`
(:mod:`lpc_geom.analysis.fisher`)."""

from __future__ import annotations

from collections.abc import Callable

import geoopt
import numpy as np
import torch
from torch.func import jacfwd, jacrev, vmap

from lpc_geom.analysis._validation import (
    UndefinedMetricError,
    check_bool,
    check_curvature,
    check_int,
    check_seed,
)
from lpc_geom.analysis.fisher import _common as shared
from lpc_geom.analysis.fisher._common import DEFAULT_MIN_PROB, FisherPointwise
from lpc_geom.analysis.fisher._docs import share_docs
from lpc_geom.analysis.transport import check_points_on_manifold

__all__ = ["fisher_pointwise_autograd", "pullback_metric_autograd", "sectional_curvature_autograd"]


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
    z = shared._latents(latents)
    _latent_chart(manifold)
    check_points_on_manifold(z, manifold, "latents")
    if not callable(logits_fn):
        raise TypeError("logits_fn must be callable: (n, d) float64 tensor -> (n, K) logits")
    with torch.no_grad():
        out = logits_fn(z[:1])
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise ValueError("logits_fn must map a (n, d) tensor to a (n, K) tensor of logits")
    if out.dtype != shared._DTYPE:
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


@share_docs
def pullback_metric_autograd(
    latents, logits_fn, *, manifold=None, chunk_size: int = shared._DEFAULT_AUTOGRAD_CHUNK
) -> np.ndarray:
    r"""Pull-back Fisher metric :math:`G = J^\top(\mathrm{diag}\,p - pp^\top)J` of a differentiable head.

    :math:`J` is the Jacobian of the logits in :math:`z`; computed as :math:`J_\phi^\top J_\phi` with
    :math:`\phi = 2\sqrt{p}` (``torch.func.jacrev`` under ``vmap``).

    Parameters
    ----------
    ${latents}
    ${logits_fn}
    ${manifold}
    chunk_size : int

    Returns
    -------
    ndarray, shape (N, d, d)
    """
    z, _ = _check_autograd_input(latents, logits_fn, manifold)
    out = torch.empty(z.shape[0], z.shape[1], z.shape[1], dtype=shared._DTYPE)
    for sl in shared._chunks(z.shape[0], chunk_size):
        _, J, _ = _phi_derivatives(z[sl], logits_fn, hessian=False, manifold=manifold)
        out[sl] = J.transpose(-1, -2) @ J
    return out.detach().numpy()


def _frame(J: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of J_phi with a per-point rank mask: U (n,K,m), s (n,m), Vh (n,m,d), mask (n,m)."""
    U, s, Vh = torch.linalg.svd(J, full_matrices=False)
    keep = s > shared.RANK_RTOL * s[..., :1]
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


@share_docs
def fisher_pointwise_autograd(
    latents,
    logits_fn,
    *,
    manifold=None,
    min_prob: float = DEFAULT_MIN_PROB,
    curvature: bool = True,
    chunk_size: int = shared._DEFAULT_AUTOGRAD_CHUNK,
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
    ${latents}
    ${logits_fn}
    ${manifold}
    ${min_prob}
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
    min_prob = shared._check_min_prob(min_prob)
    curvature = check_bool(curvature, "curvature")
    z, K = _check_autograd_input(latents, logits_fn, manifold)
    N, d = z.shape
    out = shared._PointwiseBuffers(N, K, curvature)
    for sl in shared._chunks(N, chunk_size):
        logp, J, H = _phi_derivatives(z[sl], logits_fn, hessian=curvature, manifold=manifold)
        p = logp.exp()
        ok = p.min(dim=-1).values >= min_prob
        if H is not None and not torch.isfinite(H[ok]).all():
            raise ValueError("logits_fn produced non-finite second derivatives at unmasked latents")
        U, s, Vh, keep = _frame(J)
        logs = torch.where(keep, s.clamp_min(torch.finfo(shared._DTYPE).tiny).log(), 0.0).sum(dim=-1)
        out.fill(sl, p, s.square().sum(dim=-1), keep.sum(dim=-1), logs, ok)
        if curvature and ok.any():
            Uo, so, Vho, ko = U[ok], s[ok], Vh[ok], keep[ok]
            E = Vho.transpose(-1, -2) * torch.where(ko, 1.0 / so, 0.0).unsqueeze(-2)
            II = _second_fundamental_form(H[ok], Uo, ko, E, E)
            mean_curv = torch.diagonal(II, dim1=-2, dim2=-1).sum(dim=-1)
            out.fill_curvature(sl, ok, mean_curv.square().sum(dim=-1) - II.square().sum(dim=(-3, -2, -1)))
    return out.result(min_prob, int(out.rank.max()), d)

@share_docs
def sectional_curvature_autograd(
    latents,
    logits_fn,
    *,
    manifold=None,
    planes=None,
    n_planes: int = 1,
    seed: int = 0,
    min_prob: float = DEFAULT_MIN_PROB,
    chunk_size: int = shared._DEFAULT_AUTOGRAD_CHUNK,
) -> np.ndarray:
    r"""Sectional curvature of the pull-back Fisher metric of a differentiable head (Gauss equation).

    .. math::

        K(u,v) = \frac{\langle\mathrm{II}(u,u),\mathrm{II}(v,v)\rangle - |\mathrm{II}(u,v)|^2}
                      {|u|_G^2|v|_G^2 - \langle u,v\rangle_G^2},
        \qquad \mathrm{II} = (I - P)\,D^2\phi,\ \phi = 2\sqrt p.

    Parameters
    ----------
    ${latents}
    ${logits_fn}
    ${manifold}
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
    min_prob = shared._check_min_prob(min_prob)
    z, K = _check_autograd_input(latents, logits_fn, manifold)
    N, d = z.shape
    if planes is not None:
        u_all, v_all = shared._check_planes(planes, N, d)
    else:
        n_planes, seed = check_int(n_planes, "n_planes", minimum=1), check_seed(seed)
        frame_a, frame_b = shared._gaussian_pairs((N, n_planes, min(K, d)), seed)
    out = shared._PlaneResults(N, planes is not None, n_planes)
    for sl in shared._chunks(N, chunk_size):
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
            if not shared._plane_area_ok(Ju, Jv).all():
                raise ValueError(
                    "a given plane is degenerate for the Fisher metric at some latents "
                    "(its image under the Jacobian is a line or a point)"
                )
            denom = (Ju * Ju).sum(-1) * (Jv * Jv).sum(-1) - (Ju * Jv).sum(-1).square()
        else:
            if (keep.sum(dim=-1) < 2).any():
                raise UndefinedMetricError("the Fisher metric has rank < 2 at some latents: no 2-planes there")
            mask = keep.unsqueeze(1)
            a, c = shared._orthonormalise(frame_a[sl][ok] * mask, frame_b[sl][ok] * mask)
            # frame coordinates -> latent vectors: e_a = V_a / s_a on the kept singular directions
            to_latent = Vh.transpose(-1, -2) * torch.where(keep, 1.0 / s, 0.0).unsqueeze(-2)
            u, v = a @ to_latent.transpose(-1, -2), c @ to_latent.transpose(-1, -2)
            denom = torch.ones(u.shape[:2], dtype=shared._DTYPE)
        II_uu = _normal_hessian(H, U, keep, u, u)
        II_vv = _normal_hessian(H, U, keep, v, v)
        II_uv = _normal_hessian(H, U, keep, u, v)
        res = ((II_uu * II_vv).sum(1) - II_uv.square().sum(1)) / denom
        out.fill(sl, ok, res)
    return out.result()


def _normal_hessian(
    H: torch.Tensor, U: torch.Tensor, keep: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    r"""Normal part of :math:`D^2\phi(x_p, y_p)`, shape (n, K, P); H (n, K, d, d), x and y (n, P, d)."""
    D2 = torch.einsum("nkij,npi,npj->nkp", H, x, y)
    Ur = U * keep.unsqueeze(1)
    return D2 - Ur @ (Ur.transpose(-1, -2) @ D2)
