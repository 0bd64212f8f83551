"""The per-epoch collapse figures recorded in a run's history (a cheap subset of ``lpc_geom.analyze``)."""

from __future__ import annotations

import math

from lpc_geom.analysis.collapse import (
    UndefinedMetricError,
    class_statistics,
    norm_cv,
    separation_ratio,
    sigma_w_rel,
)

EPOCH_FIGURES = ("sigma_w_rel", "separation_ratio", "norm_cv")


def epoch_collapse_figures(latents, labels, *, manifold=None) -> dict[str, float]:
    """``sigma_w_rel``, ``separation_ratio`` (mean) and ``norm_cv`` of ``latents`` with true ``labels``.

    A figure that is undefined for these latents (e.g. every sample exactly on its class centre, or
    norms on the sphere) is recorded as NaN; the full report (:func:`lpc_geom.analyze`) says why.
    """
    stats = class_statistics(latents, labels, manifold=manifold, min_class_size=1)
    figures = {}
    for name, metric in (("sigma_w_rel", sigma_w_rel), ("separation_ratio", lambda s: separation_ratio(s).mean),
                         ("norm_cv", norm_cv)):
        try:
            figures[name] = float(metric(stats))
        except UndefinedMetricError:
            figures[name] = math.nan
    return figures
