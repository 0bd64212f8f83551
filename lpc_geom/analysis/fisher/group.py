"""The report's ``fisher`` group and its cost policy: how many points, and whether the curvature, by default.

The pointwise figures are computed on a seeded subsample (at most ``max_fisher_samples`` latents,
default :data:`FISHER_SAMPLES_LINEAR` for a linear head on open subsets of :math:`\\mathbb R^d`, closed
forms; :data:`FISHER_SAMPLES_AUTOGRAD` for a module head or sphere latents, autograd), the Fisher-Rao
distances between class means on all N latents. ``benchmarks/bench_fisher.py`` measures the costs these
defaults are set against.
"""

from __future__ import annotations

import numpy as np
import torch

from lpc_geom.analysis._validation import UndefinedMetricError
from lpc_geom.analysis.fisher.autograd import fisher_pointwise_autograd
from lpc_geom.analysis.fisher.closed_form import fisher_pointwise
from lpc_geom.analysis.fisher.summary import FISHER_RAO_KEYS, POINTWISE_KEYS, classmean_fisher_rao, pointwise_figures

FISHER_SAMPLES_LINEAR = 2000
"""Default cap on the points whose pointwise Fisher figures are computed, for a linear head (closed forms,
:math:`O(K^2 r)` per point)."""

FISHER_SAMPLES_AUTOGRAD = 500
"""Default cap for a module head or sphere latents (autograd Jacobians, a vmapped backward pass per
point)."""

FISHER_AUTOGRAD_CURVATURE_MAX_KD = 320
"""Autograd scalar curvature is computed by default only when K_out * d is at most this: it needs the
(K, d, d) Hessian of every point, and its cost grows like (K d)^2."""


def _pointwise(ctx, z: torch.Tensor, curvature: bool, min_prob: float):
    """Closed forms for a linear head on open subsets of R^d; autograd for module heads and the sphere."""
    head, s = ctx.head, ctx.stats
    sphere = s.geometry.kind == "sphere"
    if head.linear and not sphere:
        return fisher_pointwise(
            z, head.weight.cpu(), None if head.bias is None else head.bias.cpu(), min_prob=min_prob, curvature=curvature
        )
    if head.linear:
        W = head.weight.cpu()
        b = torch.zeros(W.shape[0], dtype=W.dtype) if head.bias is None else head.bias.cpu()

        def logits_fn(x: torch.Tensor) -> torch.Tensor:
            return x @ W.T + b
    else:
        logits_fn = head.module
    manifold = None
    if sphere:
        import geoopt

        manifold = geoopt.Sphere()
    # the Hessians take K d^2 floats per point: keep a chunk's below ~64 MB (times the autograd temporaries)
    chunk = int(min(256, max(1, 2**23 // (head.n_out * s.d * s.d)))) if curvature else 256
    return fisher_pointwise_autograd(
        z, logits_fn, manifold=manifold, min_prob=min_prob, curvature=curvature, chunk_size=chunk
    )


def fisher_group(ctx, out) -> None:
    """The ``fisher`` group of :func:`~lpc_geom.analysis.analyze` (``fisher_*`` keys; with a classifier,
    in memory only)."""
    if ctx.head is None or not ctx.in_memory:
        return
    s, o, head = ctx.stats, ctx.options, ctx.head
    autograd = not head.linear or s.geometry.kind == "sphere"
    cap = o.max_fisher_samples or (FISHER_SAMPLES_AUTOGRAD if autograd else FISHER_SAMPLES_LINEAR)
    curvature = o.fisher_curvature
    if curvature is None:
        curvature = not autograd or head.n_out * s.d <= FISHER_AUTOGRAD_CURVATURE_MAX_KD
    min_prob = o.fisher_min_prob
    z = s.latents.cpu()
    if s.n > cap:
        z = z[torch.from_numpy(np.sort(np.random.default_rng(o.seed).choice(s.n, size=cap, replace=False)))]
    z = z.to(torch.float64)
    # The pointwise figures are batches of small (K x r) SVDs and Jacobians: intra-op threads inside each
    # call cost more in synchronisation than they save at that size, and far more on shared cores. One
    # thread for this call only; the caller's setting is restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pw = _pointwise(ctx, z, curvature, min_prob)
    except UndefinedMetricError as err:
        pw = None
        for key in POINTWISE_KEYS:
            out.undefine(key, str(err))
    finally:
        torch.set_num_threads(threads)
    if pw is not None:
        skipped = None
        if not curvature:
            skipped = (
                "not requested (fisher_curvature=False)"
                if o.fisher_curvature is False
                else f"autograd scalar curvature skipped by default: K_out * d = {head.n_out * s.d} > "
                f"{FISHER_AUTOGRAD_CURVATURE_MAX_KD} (its cost grows like (K d)^2 per point); pass "
                "fisher_curvature=True to compute it"
            )
        pointwise_figures(out, pw, min_prob, option="fisher_min_prob", curvature_skipped=skipped)
    out.put("fisher_samples", int(z.shape[0]))
    out.attempt(
        FISHER_RAO_KEYS,
        lambda: classmean_fisher_rao(torch.softmax(ctx.head_logits(), dim=1), s.codes, s.n_classes),
    )
