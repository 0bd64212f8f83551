"""Analyzers: pure functions of latents and labels, gathered by :func:`analyze` into a :class:`CollapseReport`.

Modules: :mod:`~lpc_geom.analysis.collapse` (NC1-4, within-class spread, separation ratio, norm CV, ETF
distance), :mod:`~lpc_geom.analysis.entropy` (Kozachenko-Leonenko), :mod:`~lpc_geom.analysis.hypercube`
(binary encoding), :mod:`~lpc_geom.analysis.geometry` (Euclidean / sphere / stereographic distances and
centres), :mod:`~lpc_geom.analysis.fisher` (Fisher metric a classifier induces on its latents: trace,
log-volume, curvature, Fisher-Rao distances), :mod:`~lpc_geom.analysis.transport` (Gromov-Wasserstein
comparison of configurations, each in its own geometry), :mod:`~lpc_geom.analysis.report` (``analyze``,
``CollapseReport``), :mod:`~lpc_geom.analysis.options` (``AnalyzeOptions``, every analyzer option and its
default), :mod:`~lpc_geom.analysis._registry` (the metric groups) and :mod:`~lpc_geom.analysis.accumulator`
(streaming ``CollapseAccumulator``).

The public functions of :mod:`~lpc_geom.analysis.fisher` and :mod:`~lpc_geom.analysis.transport` are
exported here too, resolved on first use: they import geoopt and POT, which the moment and distance figures do
not need.
"""

import ast
from pathlib import Path

from lpc_geom.analysis._validation import UndefinedMetricError
from lpc_geom.analysis.accumulator import CollapseAccumulator
from lpc_geom.analysis.options import AnalyzeOptions
from lpc_geom.analysis.report import CollapseReport, analyze, metric_groups, register_metric_group


def _public_names(module: str) -> tuple[str, ...]:
    """The ``__all__`` of a submodule (or subpackage), read from its source so that it is not imported."""
    path = Path(__file__).with_name(module)
    source = (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise ImportError(f"lpc_geom.analysis.{module} defines no __all__")


_FISHER = _public_names("fisher")
_TRANSPORT = _public_names("transport")
_LAZY = {
    **{name: "lpc_geom.analysis.fisher" for name in _FISHER},
    **{name: "lpc_geom.analysis.transport" for name in _TRANSPORT},
}

__all__ = [
    "AnalyzeOptions",
    "CollapseAccumulator",
    "CollapseReport",
    "UndefinedMetricError",
    "analyze",
    "metric_groups",
    "register_metric_group",
    *_FISHER,
    *_TRANSPORT,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lpc_geom.analysis' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
