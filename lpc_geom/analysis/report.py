"""``analyze(latents, labels, ...) -> CollapseReport``: every collapse figure of a set of latents in one call.

The report's figures come from *metric groups*: named functions that read an :class:`AnalysisContext`
(validated arrays, shared statistics, options) and write flat ``str -> float/int`` figures into a
:class:`MetricCollector`. The built-in groups are ``collapse``, ``separation``, ``entropy`` and
``hypercube``. Other figures join the same report by registering a group::

    def fisher_group(ctx, out):
        if ctx.classifier is None:
            return                      # not applicable: no keys
        out.attempt("fisher_trace_mean", lambda: ...)

    register_metric_group("fisher", fisher_group)

A figure that is undefined for the data (a :class:`~lpc_geom.analysis.UndefinedMetricError` raised
inside ``out.attempt``) is stored as NaN and its reason in ``CollapseReport.undefined``; a figure that
does not apply (no classifier, streaming mode, ...) is simply absent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from lpc_geom.analysis._validation import (
    EncodedLabels,
    UndefinedMetricError,
    align_to_classes,
    check_classifier,
    check_logits,
)
from lpc_geom.analysis.collapse import (
    ClassStatistics,
    _nc4_from,
    centre_distances,
    etf_distance,
    nc1,
    nc2_equiangular,
    nc2_equinorm,
    nc2_maxangle,
    nc3_from_weights,
    norm_cv,
    prepare_inputs,
    separation_from_distances,
    sigma_w,
    sigma_w_rel,
    statistics_from_arrays,
)
from lpc_geom.analysis.entropy import entropy_from_arrays
from lpc_geom.analysis.hypercube import (
    BIMODALITY_THRESHOLD,
    bimodality_fraction,
    distinct_codes,
    gmm_figures,
    min_hamming,
    sign_agreement,
    vertex_residual,
)

__all__ = [
    "AnalysisContext",
    "CollapseReport",
    "MetricCollector",
    "MetricGroup",
    "analyze",
    "metric_groups",
    "register_metric_group",
]

Number = float | int


# -- the report ---------------------------------------------------------------------------------------
@dataclass(repr=False)
class CollapseReport:
    """Collapse figures of one set of latents.

    Attributes
    ----------
    N, K, d : int
        Samples, classes and ambient dimension of the input.
    geometry : str
        ``"euclidean"``, ``"sphere"``, ``"poincare(c=...)"`` or ``"stereographic(k=...)"``.
    metrics : dict
        Flat ``name -> float/int`` figures in group order (see :func:`analyze` for the keys).
    undefined : dict
        ``name -> reason`` for every figure that is NaN because it is undefined for these data.
    groups : dict
        ``group name -> keys`` it produced.
    classes : tuple
        The class labels in the order used internally (sorted).

    Figures are also readable as ``report["nc1"]`` or ``report.nc1``.
    """

    N: int
    K: int
    d: int
    geometry: str = "euclidean"
    metrics: dict[str, Number] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    classes: tuple = ()

    def add(self, group: str, values: Mapping[str, Number], undefined: Mapping[str, str] | None = None) -> None:
        """Add (or extend) a group of figures. Keys must be new: figures are never silently overwritten."""
        clash = (set(values) & set(self.metrics)) | ({"N", "K", "d"} & set(values))
        if clash:
            raise ValueError(f"report already has figures {sorted(clash)}")
        self.metrics.update(values)
        self.undefined.update(undefined or {})
        self.groups[group] = tuple(self.groups.get(group, ())) + tuple(values)

    def to_dict(self) -> dict[str, Number]:
        """Flat ``str -> float/int``: ``N``, ``K``, ``d``, then every figure (NaN where undefined)."""
        return {"N": self.N, "K": self.K, "d": self.d, **self.metrics}

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON of :meth:`to_dict` (NaN and infinities become ``null``)."""
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in self.to_dict().items()}
        return json.dumps(clean, indent=indent, allow_nan=False)

    def __getitem__(self, key: str) -> Number:
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in ("N", "K", "d") or key in self.metrics

    def __getattr__(self, name: str) -> Number:
        if name.startswith("_") or name in ("metrics", "undefined", "groups"):
            raise AttributeError(name)
        try:
            return self.metrics[name]
        except KeyError:
            raise AttributeError(f"CollapseReport has no figure {name!r}") from None

    @staticmethod
    def _fmt(v: Number) -> str:
        if isinstance(v, int):
            return str(v)
        if math.isnan(v):
            return "nan"
        return f"{v:.6g}"

    def __repr__(self) -> str:
        lines = [f"CollapseReport(N={self.N}, K={self.K}, d={self.d}, geometry={self.geometry})"]
        for group, keys in self.groups.items():
            body = "  ".join(f"{k}={self._fmt(self.metrics[k])}" for k in keys)
            lines.append(f"  {group}: {body}")
        for k, why in self.undefined.items():
            lines.append(f"  undefined {k}: {why}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A two-column markdown table (group headings as rows), undefined figures explained below it."""
        out = [
            f"**Collapse report** — N = {self.N}, K = {self.K}, d = {self.d}, geometry: {self.geometry}",
            "",
            "| figure | value |",
            "|---|---|",
        ]
        for group, keys in self.groups.items():
            out.append(f"| *{group}* | |")
            out.extend(f"| `{k}` | {self._fmt(self.metrics[k])} |" for k in keys)
        if self.undefined:
            out.append("")
            out.extend(f"- `{k}` undefined: {why}" for k, why in self.undefined.items())
        return "\n".join(out) + "\n"


# -- groups -------------------------------------------------------------------------------------------
@dataclass
class AnalysisContext:
    """Everything a metric group may read. ``stats.latents is None`` in streaming mode."""

    stats: ClassStatistics
    encoded: EncodedLabels
    classifier: tuple[torch.Tensor, torch.Tensor | None] | None = None
    logits: torch.Tensor | None = None
    options: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

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

    def output_index(self, n_out: int) -> torch.Tensor:
        """Index of each class's row in W / column in the logits."""
        return torch.from_numpy(align_to_classes(n_out, self.encoded, "logits/classifier")).to(self.stats.means.device)


class MetricCollector:
    """Receives a group's figures: ``put`` a value, or ``attempt`` a computation that may be undefined."""

    def __init__(self) -> None:
        self.values: dict[str, Number] = {}
        self.undefined: dict[str, str] = {}

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
    """Add a metric group to every later :func:`analyze` call (``default=False``: only when named in
    ``groups=``). Groups run in registration order; keys must not clash with earlier groups'."""
    if name in _GROUPS and not replace:
        raise ValueError(f"metric group {name!r} is already registered (pass replace=True)")
    _GROUPS[name] = MetricGroup(name, compute, default, streaming)


def metric_groups() -> dict[str, MetricGroup]:
    """The registered metric groups, in order."""
    return dict(_GROUPS)


def _collapse_group(ctx: AnalysisContext, out: MetricCollector) -> None:
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
    if ctx.in_memory and (ctx.logits is not None or ctx.classifier is not None):
        if ctx.logits is not None:
            L = ctx.logits
        else:
            W, b = ctx.classifier
            L = s.latents @ W.T if b is None else s.latents @ W.T + b
        out.attempt("nc4", lambda: _nc4_from(ctx.centre_distances(), L.argmax(dim=1), ctx.output_index(L.shape[1])))


def _separation_group(ctx: AnalysisContext, out: MetricCollector) -> None:
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


def _entropy_group(ctx: AnalysisContext, out: MetricCollector) -> None:
    if not ctx.in_memory:
        return
    o = ctx.options
    s = ctx.stats

    def run():
        return entropy_from_arrays(
            s.geometry,
            s.latents,
            s.eps,
            k=o.get("k", 20),
            max_samples=o.get("max_entropy_samples", 5000),
            seed=o.get("seed", 0),
            floor=o.get("entropy_floor"),
        )

    try:
        est = ctx.cached("entropy", run)
    except UndefinedMetricError as err:
        for key in ("entropy", "entropy_floored", "entropy_scale_free"):
            out.undefine(key, str(err))
        return
    out.put("entropy", est.entropy)
    out.put("entropy_floored", est.floored)
    if est.scale > 0:
        out.put("entropy_scale_free", est.scale_free)
    else:
        out.undefine("entropy_scale_free", "all latents used are identical (zero spread to divide by)")


def _hypercube_group(ctx: AnalysisContext, out: MetricCollector) -> None:
    s = ctx.stats
    thr = ctx.options.get("bimodality_threshold", BIMODALITY_THRESHOLD)
    out.attempt("hypercube_bimodality_fraction", lambda: bimodality_fraction(s, threshold=thr))
    out.attempt("hypercube_sign_agreement", lambda: sign_agreement(s))
    out.attempt("hypercube_vertex_residual", lambda: vertex_residual(s))
    out.attempt("hypercube_min_hamming", lambda: min_hamming(s))
    out.attempt("hypercube_distinct_codes", lambda: distinct_codes(s))
    if ctx.in_memory and ctx.options.get("gmm", False):
        out.attempt(
            ("hypercube_gmm_score", "hypercube_gmm_std", "hypercube_gmm_peak_ratio"),
            lambda: gmm_figures(
                s.chart,
                max_samples=ctx.options.get("gmm_max_samples", 2000),
                seed=ctx.options.get("seed", 0),
                eps=s.eps,
            )[:3],
        )


register_metric_group("collapse", _collapse_group, streaming=True)
register_metric_group("separation", _separation_group)
register_metric_group("entropy", _entropy_group)
register_metric_group("hypercube", _hypercube_group, streaming=True)


def build_report(
    ctx: AnalysisContext, groups: Iterable[str] | None = None, *, streaming: bool = False
) -> CollapseReport:
    """Run the selected metric groups on a context and collect a :class:`CollapseReport`."""
    if groups is None:
        selected = [g for g in _GROUPS.values() if g.default]
    else:
        names = list(groups)
        unknown = [n for n in names if n not in _GROUPS]
        if unknown:
            raise ValueError(f"unknown metric group(s) {unknown}; registered: {list(_GROUPS)}")
        selected = [g for g in _GROUPS.values() if g.name in names]
    if streaming:
        selected = [g for g in selected if g.streaming]
    s = ctx.stats
    report = CollapseReport(N=s.n, K=s.n_classes, d=s.d, geometry=s.geometry.name, classes=tuple(s.classes.tolist()))
    for group in selected:
        out = MetricCollector()
        group.compute(ctx, out)
        if out.values:
            report.add(group.name, out.values, out.undefined)
    return report


# -- the entry point ----------------------------------------------------------------------------------
def analyze(
    latents,
    labels,
    *,
    manifold=None,
    classifier=None,
    logits=None,
    k: int = 20,
    max_entropy_samples: int = 5000,
    entropy_floor: float | None = None,
    seed: int = 0,
    gmm: bool = False,
    gmm_max_samples: int = 2000,
    bimodality_threshold: float = BIMODALITY_THRESHOLD,
    min_class_size: int = 2,
    groups: Iterable[str] | None = None,
) -> CollapseReport:
    r"""Collapse, ETF, hypercube and entropy figures of classifier latents, using the true labels.

    Parameters
    ----------
    latents : numpy.ndarray or torch.Tensor, shape (N, d)
        Penultimate latents; float16/bfloat16/float32/float64 (or integer), any torch device. Computed in
        float64 on the input's device (CPU for numpy and MPS).
    labels : array-like, shape (N,)
        True labels: integers, integral floats, booleans or strings; mapped to ``0..K-1`` in sorted order.
    manifold : geoopt manifold or None
        ``None`` (Euclidean), ``geoopt.Sphere``, ``geoopt.PoincareBall(c)``, ``SphereProjection`` or
        ``Stereographic``: distances, centres and norms then use that geometry (see
        :mod:`lpc_geom.analysis.geometry`; stereographic distances are in units where the metric at the
        origin is Euclidean, so ``PoincareBall(c)`` tends to the Euclidean report as ``c -> 0``).
    classifier : (W, b), W, or nn.Linear-like, optional
        Final layer, ``W`` of shape (K_out, d). Enables ``nc3`` and (through ``W z + b``) ``nc4``.
    logits : array (N, K_out), optional
        Network outputs; enable ``nc4`` (used instead of the classifier for it).
    k : int
        Neighbour order of the entropy estimate (default 20).
    max_entropy_samples : int
        Seeded subsample cap of the entropy estimate (default 5,000).
    entropy_floor : float, optional
        Distance floor of the entropy estimate (default: the input's resolution ``eps * RMS ||z||``).
    seed : int
        Seed of every subsample.
    gmm : bool
        Also fit the paper's per-unit 2-component GMMs. Opt-in because they are slow: one
        ``sklearn.mixture.GaussianMixture`` fit per unit, about 30 ms each on the 2,000-row subsample
        (measured: 1.8 s at d = 64, about 15 s at d = 512, which alone would take half the 30 s budget).
    gmm_max_samples : int
        Rows used by each GMM fit (seeded subsample).
    bimodality_threshold : float
        Threshold on the bimodality coefficient (default 5/9).
    min_class_size : int
        Classes with fewer samples raise ``ValueError`` (default 2; see below).
    groups : iterable of str, optional
        Metric groups to compute (default: all registered default groups, see :func:`metric_groups`).

    Returns
    -------
    CollapseReport
        ``to_dict()`` keys, where they apply:

        * always: ``N``, ``K``, ``d``;
        * ``collapse``: ``sigma_w``, ``sigma_w_rel``, ``norm_cv``, ``nc1``, ``nc2_equinorm``,
          ``nc2_equiangular``, ``nc2_maxangle``, ``etf_distance``, ``nc3`` (with ``classifier``),
          ``nc4`` (with ``classifier`` or ``logits``);
        * ``separation``: ``separation_ratio``, ``separation_ratio_median``, ``separation_ratio_excluded``;
        * ``entropy``: ``entropy``, ``entropy_floored``, ``entropy_scale_free``;
        * ``hypercube``: ``hypercube_bimodality_fraction``, ``hypercube_sign_agreement``,
          ``hypercube_vertex_residual``, ``hypercube_min_hamming``, ``hypercube_distinct_codes``, and with
          ``gmm=True`` ``hypercube_gmm_score``, ``hypercube_gmm_std``, ``hypercube_gmm_peak_ratio``.

        Formulas and ranges are in the docstrings of :mod:`~lpc_geom.analysis.collapse`,
        :mod:`~lpc_geom.analysis.entropy` and :mod:`~lpc_geom.analysis.hypercube`. Figures undefined for the
        data are NaN with the reason in ``report.undefined`` (e.g. ``norm_cv`` on the sphere, the cosines
        when two class means coincide with their mean, ``separation_ratio`` when every class is a single
        point, ``entropy`` when N <= k). Duplicated or fully collapsed latents give finite figures
        otherwise.

    Raises
    ------
    TypeError
        Latents/labels/classifier of the wrong kind, mixed-type labels, an unsupported manifold.
    ValueError
        NaN/Inf in latents, logits or classifier; latents not 2-D, N < 2 or d = 1; a label count
        mismatch; a single class; labels that cannot be mapped (non-integral floats, NaN) or matched to
        the classifier's outputs; points off the sphere or outside the Poincaré ball; a class with fewer
        than ``min_class_size`` samples. With one sample the class mean *is* the sample: its separation
        ratio is 0/0 and its within-class scatter is 0 by construction; pass ``min_class_size=1`` to
        accept that (the sample is then counted in ``separation_ratio_excluded``).
    """
    geom, z, eps, enc, codes = prepare_inputs(latents, labels, manifold, min_class_size)
    clf = None
    if classifier is not None:
        clf = check_classifier(classifier, z.shape[1], z.device)
        align_to_classes(clf[0].shape[0], enc, "classifier")
    L = None
    if logits is not None:
        L = check_logits(logits, z.shape[0], z.device)
        align_to_classes(L.shape[1], enc, "logits")
    if gmm_max_samples < 2:
        raise ValueError(f"gmm_max_samples must be >= 2; got {gmm_max_samples}")
    stats = statistics_from_arrays(geom, z, eps, enc, codes)
    options = {
        "k": k,
        "max_entropy_samples": max_entropy_samples,
        "entropy_floor": entropy_floor,
        "seed": seed,
        "gmm": gmm,
        "gmm_max_samples": gmm_max_samples,
        "bimodality_threshold": bimodality_threshold,
    }
    ctx = AnalysisContext(stats=stats, encoded=enc, classifier=clf, logits=L, options=options)
    return build_report(ctx, groups)
