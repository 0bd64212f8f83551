"""Analyzers: pure functions of latents and labels, gathered by :func:`analyze` into a :class:`CollapseReport`.

Modules: :mod:`~lpc_geom.analysis.collapse` (NC1-4, within-class spread, separation ratio, norm CV, ETF
distance), :mod:`~lpc_geom.analysis.entropy` (Kozachenko-Leonenko), :mod:`~lpc_geom.analysis.hypercube`
(binary encoding), :mod:`~lpc_geom.analysis.geometry` (Euclidean / sphere / stereographic distances and
centres), :mod:`~lpc_geom.analysis.report` (``analyze``, ``CollapseReport``, metric groups) and
:mod:`~lpc_geom.analysis.accumulator` (streaming ``CollapseAccumulator``).
"""

from lpc_geom.analysis._validation import UndefinedMetricError
from lpc_geom.analysis.accumulator import CollapseAccumulator
from lpc_geom.analysis.report import CollapseReport, analyze, metric_groups, register_metric_group

__all__ = [
    "CollapseAccumulator",
    "CollapseReport",
    "UndefinedMetricError",
    "analyze",
    "metric_groups",
    "register_metric_group",
]
