r"""Summaries of the Fisher geometry: Fisher-Rao distances between class-mean predictive distributions, and the
figures the report's ``fisher`` group and :func:`fisher_summary` take from the pointwise quantities."""

from __future__ import annotations

import numpy as np
import torch

from lpc_geom.analysis._registry import MetricCollector, warn_small_subsets
from lpc_geom.analysis._validation import encode_labels
from lpc_geom.analysis.fisher._common import (
    _DEFAULT_AUTOGRAD_CHUNK,
    _DEFAULT_CHUNK,
    DEFAULT_MIN_PROB,
    FisherPointwise,
)
from lpc_geom.analysis.fisher._docs import share_docs
from lpc_geom.analysis.fisher.autograd import fisher_pointwise_autograd
from lpc_geom.analysis.fisher.closed_form import fisher_pointwise

__all__ = ["fisher_rao_distance", "fisher_summary"]

POINTWISE_KEYS = ("fisher_logvol_mean", "fisher_trace_mean", "fisher_scalar_curvature",
                  "fisher_scalar_curvature_std", "fisher_masked_fraction", "fisher_rank")  # fmt: skip
"""The figures :func:`pointwise_figures` writes, in order."""

MASKED_KEYS = ("fisher_logvol_mean", "fisher_scalar_curvature", "fisher_scalar_curvature_std")
"""The figures that are means over the unmasked points only."""

FISHER_RAO_KEYS = ("fisher_rao_classmean_min", "fisher_rao_classmean_mean")


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


def classmean_fisher_rao(probs: torch.Tensor, codes: torch.Tensor, n_classes: int) -> tuple[float, float]:
    r"""Min and mean over class pairs of the Fisher-Rao distance between class-mean predictive distributions.

    :math:`\bar p_c` is the mean of the rows of ``probs`` (N, K_out) whose ``codes`` are ``c``, renormalised
    to sum to 1 (which removes the rounding drift of the average); the distances are
    :func:`fisher_rao_distance` over the pairs :math:`c < c'`, computed in blocks of rows that bound the
    memory.
    """
    mean_p = torch.zeros(n_classes, probs.shape[1], dtype=probs.dtype, device=probs.device).index_add_(0, codes, probs)
    mean_p = mean_p / mean_p.sum(dim=1, keepdim=True)
    mp = mean_p.cpu().numpy()
    K, rows = mp.shape[0], max(1, 2**22 // (mp.shape[0] * mp.shape[1]))
    fr = np.concatenate([fisher_rao_distance(mp[a : a + rows, None, :], mp[None, :, :]) for a in range(0, K, rows)])
    pairs = fr[np.triu_indices(K, k=1)]
    return float(pairs.min()), float(pairs.mean())


def pointwise_figures(
    out: MetricCollector, pw: FisherPointwise, min_prob: float, *, option: str, curvature_skipped: str | None = None
) -> None:
    """Write the :data:`POINTWISE_KEYS` of per-point quantities ``pw`` into ``out``.

    The means over unmasked points are undefined (NaN and the reason) when every point is masked, and
    noted when few are (:meth:`~lpc_geom.analysis._registry.MetricCollector.subset`); ``option`` names the
    mask threshold in those messages. ``curvature_skipped``: why the curvature was not computed (both
    curvature keys are then undefined for that reason).
    """
    valid = ~pw.masked
    n_valid = int(valid.sum())
    masked_reason = (
        f"all {valid.size} points analysed have min_k p_k < {option} = {min_prob:g} (too confident: "
        "the volume and curvature formulas lose all precision there); fisher_trace_mean and the "
        "Fisher-Rao distances remain defined"
    )
    if n_valid:
        out.put("fisher_logvol_mean", float(pw.logvol[valid].mean()))
    else:
        out.undefine("fisher_logvol_mean", masked_reason)
    out.put("fisher_trace_mean", float(pw.trace.mean()))
    if curvature_skipped is not None:
        out.undefine("fisher_scalar_curvature", curvature_skipped)
        out.undefine("fisher_scalar_curvature_std", curvature_skipped)
    elif n_valid:
        curv = pw.scalar_curvature[valid]
        out.put("fisher_scalar_curvature", float(curv.mean()))
        out.put("fisher_scalar_curvature_std", float(curv.std()))
    else:
        out.undefine("fisher_scalar_curvature", masked_reason)
        out.undefine("fisher_scalar_curvature_std", masked_reason)
    out.subset(
        MASKED_KEYS,
        n_valid,
        valid.size,
        "points analysed",
        f"the others have min_k p_k < {option} = {min_prob:g} and are masked (fisher_masked_fraction)",
    )
    out.put("fisher_masked_fraction", float(1.0 - n_valid / valid.size))
    out.put("fisher_rank", int(pw.range_rank))


@share_docs
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
    r"""Fisher-geometry summary of a classifier at its latents: the ``fisher_*`` figures of
    :func:`lpc_geom.analyze`, computed by the same code (:func:`pointwise_figures`,
    :func:`classmean_fisher_rao`) on every given point, with the curvature.

    Give either the linear head ``(W, b)`` (closed forms,
    :func:`~lpc_geom.analysis.fisher.fisher_pointwise`) or ``logits_fn`` for a manifold head (autograd,
    :func:`~lpc_geom.analysis.fisher.fisher_pointwise_autograd`).

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
    ${latents}
    W : array_like, shape (K, d), optional
        Linear classifier weights (exclusive with ``logits_fn``).
    b : array_like, shape (K,), optional
    labels : array_like, shape (N,)
        True labels (integers, integral floats, booleans or strings); at least two distinct classes,
        checked by :func:`~lpc_geom.analysis._validation.encode_labels`.
    logits_fn : callable, optional
        (n, d) float64 tensor -> (n, K) logits of a manifold head (exclusive with ``W``).
    manifold : geoopt.Manifold, optional
        Latent geometry of a ``logits_fn`` head (see
        :func:`~lpc_geom.analysis.fisher.fisher_pointwise_autograd`).
    ${min_prob}
    chunk_size : int, optional
        Points per batch; defaults to 1024 (linear) or 256 (autograd).

    Returns
    -------
    dict[str, float]
        The keys above, in that order.

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
    out = MetricCollector()
    pointwise_figures(out, pw, min_prob, option="min_prob")
    probs, codes = torch.from_numpy(pw.probs), torch.from_numpy(enc.codes)
    for key, value in zip(FISHER_RAO_KEYS, classmean_fisher_rao(probs, codes, enc.n_classes), strict=True):
        out.put(key, value)
    warn_small_subsets(out.notes, stacklevel=2)
    return {key: float(value) for key, value in out.values.items()}
