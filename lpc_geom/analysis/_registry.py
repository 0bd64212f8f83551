"""Metric groups: what a group reads (:class:`AnalysisContext`), where it writes (:class:`MetricCollector`),
and the table of registered groups that :func:`~lpc_geom.analysis.analyze` runs in order. A group is a
function ``group(ctx, out)`` of the two.

The built-in groups live beside their analyzers (``collapse`` and ``separation`` in
:mod:`~lpc_geom.analysis.collapse`, ``entropy`` in :mod:`~lpc_geom.analysis.entropy`, ``hypercube`` in
:mod:`~lpc_geom.analysis.hypercube`, ``fisher`` in :mod:`~lpc_geom.analysis.fisher.group`, ``transport`` in
:mod:`~lpc_geom.analysis.transport`) and are registered here, in that order, by name: each module is
imported on the group's first call, so that ``import lpc_geom.analysis`` does not import geoopt and POT,
which only the Fisher and transport analyzers need.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from lpc_geom.analysis._validation import (
    ClassifierHead,
    EncodedLabels,
    SmallSubsetWarning,
    UndefinedMetricError,
    align_to_classes,
    check_groups,
    small_subset_note,
)
from lpc_geom.analysis.collapse import ClassStatistics, centre_distances
from lpc_geom.analysis.options import AnalyzeOptions

__all__ = [
    "AnalysisContext",
    "MetricCollector",
    "MetricGroup",
    "metric_groups",
    "register_metric_group",
    "selected_groups",
    "warn_small_subsets",
]

Number = float | int


@dataclass
class AnalysisContext:
    """Everything a metric group may read. ``stats.latents is None`` in streaming mode.

    Attributes
    ----------
    stats : ClassStatistics
    encoded : EncodedLabels
    classifier : (W, b) or None
        Float64 class weights for the weight-based figures (``nc3``): a linear head's ``(W, b)``, or a
        module head's ``(.weight, None)``; ``None`` without a classifier or when the module has no
        (K_out, d) ``.weight``.
    head : ClassifierHead or None
        The validated classifier (linear, or a float64 copy of a module head), for its logits and its
        Fisher geometry; ``None`` without a classifier and in streaming mode.
    logits : Tensor or None
        Network outputs passed to ``analyze``.
    manifold : geoopt manifold or None
        The manifold the latents live on, as given (for functions that take a geoopt manifold).
    options : AnalyzeOptions
        The validated analyzer options.
    cache : dict
        Shared intermediate results (see :meth:`cached`).
    output_classes : EncodedLabels or None
        The class of each classifier output (``classes=`` of :func:`~lpc_geom.analysis.analyze`), or
        ``None``: see :func:`~lpc_geom.analysis._validation.align_to_classes`.
    """

    stats: ClassStatistics
    encoded: EncodedLabels
    classifier: tuple[torch.Tensor, torch.Tensor | None] | None = None
    head: ClassifierHead | None = None
    logits: torch.Tensor | None = None
    manifold: Any = None
    options: AnalyzeOptions = field(default_factory=AnalyzeOptions)
    cache: dict[str, Any] = field(default_factory=dict)
    output_classes: EncodedLabels | None = None

    @property
    def in_memory(self) -> bool:
        return self.stats.latents is not None

    def cached(self, key: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` computed once per analysis (exceptions are re-raised on every call)."""
        if key not in self.cache:
            try:
                self.cache[key] = (True, fn())
            except UndefinedMetricError as err:
                self.cache[key] = (False, err)
        ok, value = self.cache[key]
        if not ok:
            raise value
        return value

    def centre_distances(self) -> torch.Tensor:
        """(N, K) geodesic distances to the class centres, computed once."""
        return self.cached("centre_distances", lambda: centre_distances(self.stats))

    def head_logits(self) -> torch.Tensor:
        """(N, K_out) float64 outputs of the classifier head at the latents (in memory), computed once (or
        taken from the statistics, which compute a linear head's with their second pass when asked to)."""
        s = self.stats
        return self.cached("head_logits", lambda: s.logits if s.logits is not None else self.head.logits(s.latents))

    def output_index(self, n_out: int) -> torch.Tensor:
        """Index of each class's row in W / column in the logits."""
        index = align_to_classes(n_out, self.encoded, "logits/classifier", self.output_classes)
        return torch.from_numpy(index).to(self.stats.means.device)


class MetricCollector:
    """Receives a group's figures: ``put`` a value, or ``attempt`` a computation that may be undefined;
    ``subset`` flags figures computed from a small fraction of the points."""

    def __init__(self) -> None:
        self.values: dict[str, Number] = {}
        self.undefined: dict[str, str] = {}
        self.notes: dict[str, str] = {}

    def subset(self, keys: str | Iterable[str], used: int, total: int, what: str, why: str) -> None:
        """Note ``keys`` as resting on ``used`` of ``total`` points when that is a small fraction
        (:func:`~lpc_geom.analysis._validation.small_subset_note`); the report warns about them."""
        note = small_subset_note(used, total, what, why)
        if note is not None:
            for key in (keys,) if isinstance(keys, str) else keys:
                self.notes[key] = note

    def put(self, key: str, value: Number) -> None:
        self.values[key] = value if isinstance(value, int) else float(value)

    def undefine(self, key: str, reason: str) -> None:
        """Record ``key`` as undefined (NaN) for ``reason``."""
        self.values[key] = float("nan")
        self.undefined[key] = reason

    def attempt(self, keys: str | Iterable[str], fn: Callable[[], Any]) -> None:
        """Store ``fn()`` under ``keys`` (one key, or several matched to a returned tuple); NaN and the
        reason under every key if ``fn`` raises :class:`UndefinedMetricError`."""
        names = (keys,) if isinstance(keys, str) else tuple(keys)
        try:
            result = fn()
        except UndefinedMetricError as err:
            for name in names:
                self.undefine(name, str(err))
            return
        results = (result,) if len(names) == 1 else tuple(result)
        if len(results) != len(names):
            raise RuntimeError(f"metric group returned {len(results)} values for keys {names}")
        for name, value in zip(names, results, strict=True):
            self.put(name, value)


def warn_small_subsets(notes: Mapping[str, str], *, stacklevel: int = 1) -> None:
    """One :class:`~lpc_geom.analysis._validation.SmallSubsetWarning` per distinct note, naming its figures
    (``stacklevel`` counts from the caller, as in ``warnings.warn``)."""
    by_reason: dict[str, list[str]] = {}
    for key, why in notes.items():
        by_reason.setdefault(why, []).append(key)
    for why, keys in by_reason.items():
        warnings.warn(f"{', '.join(keys)}: {why}", SmallSubsetWarning, stacklevel=stacklevel + 1)


class MetricGroup(NamedTuple):
    """A named producer of figures. ``streaming`` groups also run on :class:`CollapseAccumulator` moments
    (they must then skip keys that need ``ctx.stats.latents``)."""

    name: str
    compute: Callable[[AnalysisContext, MetricCollector], None]
    default: bool = True
    streaming: bool = False


_GROUPS: dict[str, MetricGroup] = {}


def register_metric_group(
    name: str,
    compute: Callable[[AnalysisContext, MetricCollector], None],
    *,
    default: bool = True,
    streaming: bool = False,
    replace: bool = False,
) -> None:
    """Add a metric group to every later :func:`~lpc_geom.analysis.analyze` call (``default=False``: only
    when named in ``groups=``). Groups run in registration order; keys must not clash with earlier groups'."""
    if name in _GROUPS and not replace:
        raise ValueError(f"metric group {name!r} is already registered (pass replace=True)")
    _GROUPS[name] = MetricGroup(name, compute, default, streaming)


def metric_groups() -> dict[str, MetricGroup]:
    """The registered metric groups, in order."""
    return dict(_GROUPS)


def selected_groups(groups: Iterable[str] | str | None, *, streaming: bool = False) -> list[MetricGroup]:
    """The groups named in ``groups`` (checked by :func:`~lpc_geom.analysis._validation.check_groups`;
    ``None``: the default ones), in registration order; only the streaming ones when ``streaming``."""
    names = check_groups(groups, _GROUPS)
    if names is None:
        selected = [g for g in _GROUPS.values() if g.default]
    else:
        selected = [g for g in _GROUPS.values() if g.name in names]
    return [g for g in selected if g.streaming] if streaming else selected


@dataclass(frozen=True)
class _BuiltinGroup:
    """A built-in group's function, named by module and attribute and imported on its first call."""

    module: str
    function: str

    def __call__(self, ctx: AnalysisContext, out: MetricCollector) -> None:
        getattr(importlib.import_module(self.module), self.function)(ctx, out)


def _builtin(module: str, function: str) -> _BuiltinGroup:
    return _BuiltinGroup(f"lpc_geom.analysis.{module}", function)


register_metric_group("collapse", _builtin("collapse", "collapse_group"), streaming=True)
register_metric_group("separation", _builtin("collapse", "separation_group"))
register_metric_group("entropy", _builtin("entropy", "entropy_group"))
register_metric_group("hypercube", _builtin("hypercube", "hypercube_group"), streaming=True)
register_metric_group("fisher", _builtin("fisher.group", "fisher_group"))
register_metric_group("transport", _builtin("transport", "transport_group"), streaming=True)
