"""``analyze(latents, labels, ...) -> CollapseReport``: every collapse figure of a set of latents in one call.

The report's figures come from *metric groups*: named functions that read an :class:`AnalysisContext`
(validated arrays, shared statistics, options) and write flat ``str -> float/int`` figures into a
:class:`MetricCollector`. The built-in groups are ``collapse``, ``separation``, ``entropy``,
``hypercube``, ``fisher`` (with a classifier; :mod:`~lpc_geom.analysis.fisher`) and ``transport``
(Gromov-Wasserstein, :mod:`~lpc_geom.analysis.transport`). Other figures join the same report by
registering a group::

    def weight_norm_group(ctx, out):
        if ctx.classifier is None:
            return                      # not applicable: no keys
        out.attempt("classifier_weight_norm", lambda: float(ctx.classifier[0].norm()))

    register_metric_group("weight_norm", weight_norm_group)

A figure that is undefined for the data (a :class:`~lpc_geom.analysis.UndefinedMetricError` raised
inside ``out.attempt``) is stored as NaN and its reason in ``CollapseReport.undefined``; a figure that
does not apply (no classifier, streaming mode, ...) is simply absent. A figure computed from a small
fraction of the points it summarises (``out.subset``; below
:data:`~lpc_geom.analysis._validation.SMALL_SUBSET_FRACTION`) keeps its value, gets a note in
``CollapseReport.notes`` and a :class:`~lpc_geom.analysis._validation.SmallSubsetWarning`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from lpc_geom.analysis._validation import (
    ClassifierHead,
    EncodedLabels,
    SmallSubsetWarning,
    UndefinedMetricError,
    align_to_classes,
    check_bimodality_threshold,
    check_bool,
    check_groups,
    check_head,
    check_int,
    check_logits,
    check_output_classes,
    check_real,
    small_subset_note,
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
from lpc_geom.analysis.entropy import check_entropy_options, entropy_from_arrays
from lpc_geom.analysis.hypercube import (
    BIMODALITY_THRESHOLD,
    bimodality_fraction,
    class_codes,
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
    notes : dict
        ``name -> reason`` for figures that are defined but rest on a small fraction of the points they
        summarise (below :data:`~lpc_geom.analysis._validation.SMALL_SUBSET_FRACTION`; ``analyze`` also
        emits a :class:`~lpc_geom.analysis._validation.SmallSubsetWarning` for them).
    groups : dict
        ``group name -> keys`` it produced.
    classes : tuple
        The class labels in the order used internally (sorted; decimal-integer strings in numeric order,
        :func:`~lpc_geom.analysis._validation.class_order`).

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
    notes: dict[str, str] = field(default_factory=dict)

    def add(
        self,
        group: str,
        values: Mapping[str, Number],
        undefined: Mapping[str, str] | None = None,
        notes: Mapping[str, str] | None = None,
    ) -> None:
        """Add (or extend) a group of figures. Keys must be new: figures are never silently overwritten."""
        clash = (set(values) & set(self.metrics)) | ({"N", "K", "d"} & set(values))
        if clash:
            raise ValueError(f"report already has figures {sorted(clash)}")
        self.metrics.update(values)
        self.undefined.update(undefined or {})
        self.notes.update(notes or {})
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
        if name.startswith("_") or name in ("metrics", "undefined", "groups", "notes"):
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
        for k, why in self.notes.items():
            lines.append(f"  note {k}: {why}")
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
        if self.undefined or self.notes:
            out.append("")
            out.extend(f"- `{k}` undefined: {why}" for k, why in self.undefined.items())
            out.extend(f"- `{k}` note: {why}" for k, why in self.notes.items())
        return "\n".join(out) + "\n"


# -- groups -------------------------------------------------------------------------------------------
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
    options : dict
        ``analyze``'s keyword options.
    cache : dict
        Shared intermediate results (see :meth:`cached`).
    output_classes : EncodedLabels or None
        The class of each classifier output (``classes=`` of :func:`analyze`), or ``None``: see
        :func:`~lpc_geom.analysis._validation.align_to_classes`.
    """

    stats: ClassStatistics
    encoded: EncodedLabels
    classifier: tuple[torch.Tensor, torch.Tensor | None] | None = None
    head: ClassifierHead | None = None
    logits: torch.Tensor | None = None
    manifold: Any = None
    options: dict[str, Any] = field(default_factory=dict)
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
        """(N, K_out) float64 outputs of the classifier head at the latents (in memory), computed once."""
        return self.cached("head_logits", lambda: self.head.logits(self.stats.latents))

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
    if ctx.in_memory and (ctx.logits is not None or ctx.head is not None):
        L = ctx.logits if ctx.logits is not None else ctx.head_logits()
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
    out.subset(
        keys[:2], ctx.stats.n - res.excluded, ctx.stats.n, "samples",
        "the others sit exactly on their class centre (zero own-class distance, R = x/0) and are excluded",
    )


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


# -- Fisher geometry of the classifier ----------------------------------------------------------------
FISHER_SAMPLES_LINEAR = 2000
"""Default cap on the points whose pointwise Fisher figures are computed, for a linear head (closed forms;
measured 2.8 ms per point at K = 100, d = 512 and 0.03 ms at K = 10, d = 64, one thread)."""

FISHER_SAMPLES_AUTOGRAD = 500
"""Default cap for a module head or sphere latents (autograd Jacobians; measured 0.09 ms per point at K = 10,
d = 64 and 9 ms at K = 100, d = 512 without curvature, one thread)."""

FISHER_AUTOGRAD_CURVATURE_MAX_KD = 320
"""Autograd scalar curvature is computed by default only when K_out * d is at most this: it needs the
(K, d, d) Hessian of every point, and its cost grows like (K d)^2 (measured 1.1 ms per point at K = 10,
d = 32; 3 ms at K = 10, d = 64; 180 ms at K = 100, d = 32)."""

_FISHER_POINT_KEYS = (
    "fisher_logvol_mean",
    "fisher_trace_mean",
    "fisher_scalar_curvature",
    "fisher_scalar_curvature_std",
    "fisher_masked_fraction",
    "fisher_rank",
)


def _fisher_pointwise(ctx: AnalysisContext, z: torch.Tensor, curvature: bool, min_prob: float):
    """Closed forms for a linear head on open subsets of R^d; autograd for module heads and the sphere."""
    from lpc_geom.analysis import fisher

    head, s = ctx.head, ctx.stats
    sphere = s.geometry.kind == "sphere"
    if head.linear and not sphere:
        return fisher.fisher_pointwise(
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
    return fisher.fisher_pointwise_autograd(
        z, logits_fn, manifold=manifold, min_prob=min_prob, curvature=curvature, chunk_size=chunk
    )


def _fisher_rao_classmeans(ctx: AnalysisContext) -> tuple[float, float]:
    """Min and mean over class pairs of the Fisher-Rao distance between class-mean predictive
    distributions, over all N points."""
    from lpc_geom.analysis.fisher import fisher_rao_distance

    s = ctx.stats
    P = torch.softmax(ctx.head_logits(), dim=1)
    mean_p = torch.zeros(s.n_classes, P.shape[1], dtype=P.dtype, device=P.device).index_add_(0, s.codes, P)
    mean_p = mean_p / mean_p.sum(dim=1, keepdim=True)  # the per-class mean, with its rounding drift removed
    mp = mean_p.cpu().numpy()
    K, rows = mp.shape[0], max(1, 2**22 // (mp.shape[0] * mp.shape[1]))  # blocks of rows bound the memory
    fr = np.concatenate([fisher_rao_distance(mp[a : a + rows, None, :], mp[None, :, :]) for a in range(0, K, rows)])
    pairs = fr[np.triu_indices(K, k=1)]
    return float(pairs.min()), float(pairs.mean())


def _fisher_group(ctx: AnalysisContext, out: MetricCollector) -> None:
    """Fisher metric the classifier induces on the latents (``fisher_*`` keys; see :func:`analyze`)."""
    if ctx.head is None or not ctx.in_memory:
        return
    from lpc_geom.analysis.fisher import DEFAULT_MIN_PROB

    s, o, head = ctx.stats, ctx.options, ctx.head
    autograd = not head.linear or s.geometry.kind == "sphere"
    cap = o.get("max_fisher_samples") or (FISHER_SAMPLES_AUTOGRAD if autograd else FISHER_SAMPLES_LINEAR)
    curvature = o.get("fisher_curvature")
    if curvature is None:
        curvature = not autograd or head.n_out * s.d <= FISHER_AUTOGRAD_CURVATURE_MAX_KD
    min_prob = o.get("fisher_min_prob", DEFAULT_MIN_PROB)
    z = s.latents.cpu()
    if s.n > cap:
        z = z[torch.from_numpy(np.sort(np.random.default_rng(o.get("seed", 0)).choice(s.n, size=cap, replace=False)))]
    # The pointwise figures are batches of small (K x r) SVDs / Jacobians. Intra-op threads inside each
    # MKL call are pure overhead at that size, and on shared cores their barriers are ruinous: measured on
    # the project's 2-core machine under load, 300 SVDs of 100 x 99 took 0.71 s on one thread and 15.9 s
    # on two. The thread count is set to 1 for this call only and restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pw = _fisher_pointwise(ctx, z, curvature, min_prob)
    except UndefinedMetricError as err:
        pw = None
        for key in _FISHER_POINT_KEYS:
            out.undefine(key, str(err))
    finally:
        torch.set_num_threads(threads)
    if pw is not None:
        valid = ~pw.masked
        n_valid = int(valid.sum())
        masked_reason = (
            f"all {valid.size} points analysed have min_k p_k < fisher_min_prob = {min_prob:g} (too confident: "
            "the volume and curvature formulas lose all precision there); fisher_trace_mean and the "
            "Fisher-Rao distances remain defined"
        )
        if n_valid:
            out.put("fisher_logvol_mean", float(pw.logvol[valid].mean()))
        else:
            out.undefine("fisher_logvol_mean", masked_reason)
        out.put("fisher_trace_mean", float(pw.trace.mean()))
        if not curvature:
            why = (
                "not requested (fisher_curvature=False)"
                if o.get("fisher_curvature") is False
                else f"autograd scalar curvature skipped by default: K_out * d = {head.n_out * s.d} > "
                f"{FISHER_AUTOGRAD_CURVATURE_MAX_KD} (its cost grows like (K d)^2 per point); pass "
                "fisher_curvature=True to compute it"
            )
            out.undefine("fisher_scalar_curvature", why)
            out.undefine("fisher_scalar_curvature_std", why)
        elif n_valid:
            curv = pw.scalar_curvature[valid]
            out.put("fisher_scalar_curvature", float(curv.mean()))
            out.put("fisher_scalar_curvature_std", float(curv.std()))
        else:
            out.undefine("fisher_scalar_curvature", masked_reason)
            out.undefine("fisher_scalar_curvature_std", masked_reason)
        out.subset(
            ("fisher_logvol_mean", "fisher_scalar_curvature", "fisher_scalar_curvature_std"),
            n_valid,
            valid.size,
            "points analysed",
            f"the others have min_k p_k < fisher_min_prob = {min_prob:g} and are masked (fisher_masked_fraction)",
        )
        out.put("fisher_masked_fraction", float(1.0 - n_valid / valid.size))
        out.put("fisher_rank", int(pw.range_rank))
    out.put("fisher_samples", int(z.shape[0]))
    out.attempt(("fisher_rao_classmean_min", "fisher_rao_classmean_mean"), lambda: _fisher_rao_classmeans(ctx))


# -- Gromov-Wasserstein comparison with reference geometries ------------------------------------------
def _transport_group(ctx: AnalysisContext, out: MetricCollector) -> None:
    """``gw_etf`` and ``gw_hypercube`` of the class centres (see :func:`analyze`)."""
    from lpc_geom.analysis import transport

    s, o = ctx.stats, ctx.options
    keys = ("gw_etf", "gw_hypercube")
    # Coordinates that are 0 in exact arithmetic (the hypercube figures' zero test) are set to 0, so that the
    # sign codes gw_hypercube reads agree with theirs, in memory and streamed.
    chart = torch.where(class_codes(s) == 0, torch.zeros_like(s.means), s.means)
    centres = s.geometry.from_chart(chart)
    bad = ~torch.isfinite(centres).all(dim=1)
    if s.geometry.kind == "stereographic" and s.geometry.k < 0:
        bad |= (centres * centres).sum(dim=1) * (-s.geometry.k) >= 1.0
    if bool(bad.any()):
        names = ", ".join(repr(c) for c in s.classes[bad.cpu().numpy()][:5].tolist())
        why = (
            f"the class centre of {names} is undefined (on the sphere: mean direction ~0; on the ball: it rounds "
            "onto the boundary)"
        )
        for key in keys:
            out.undefine(key, why)
        return
    c = centres.cpu().numpy()
    manifold = ctx.manifold
    out.attempt("gw_etf", lambda: transport.gw_to_simplex_closed_form(c, manifold))
    out.attempt(
        "gw_hypercube",
        lambda: transport.gw_hypercube(c, manifold=manifold, restarts=o.get("gw_restarts", 10), seed=o.get("seed", 0)),
    )


register_metric_group("collapse", _collapse_group, streaming=True)
register_metric_group("separation", _separation_group)
register_metric_group("entropy", _entropy_group)
register_metric_group("hypercube", _hypercube_group, streaming=True)
register_metric_group("fisher", _fisher_group)
register_metric_group("transport", _transport_group, streaming=True)


def build_report(
    ctx: AnalysisContext, groups: Iterable[str] | None = None, *, streaming: bool = False
) -> CollapseReport:
    """Run the selected metric groups on a context and collect a :class:`CollapseReport`."""
    names = check_groups(groups, _GROUPS)
    if names is None:
        selected = [g for g in _GROUPS.values() if g.default]
    else:
        selected = [g for g in _GROUPS.values() if g.name in names]
    if streaming:
        selected = [g for g in selected if g.streaming]
    s = ctx.stats
    report = CollapseReport(N=s.n, K=s.n_classes, d=s.d, geometry=s.geometry.name, classes=tuple(s.classes.tolist()))
    for group in selected:
        out = MetricCollector()
        group.compute(ctx, out)
        if out.values:
            notes = {k: v for k, v in out.notes.items() if k in out.values and k not in out.undefined}
            report.add(group.name, out.values, out.undefined, notes)
    by_reason: dict[str, list[str]] = {}
    for key, why in report.notes.items():
        by_reason.setdefault(why, []).append(key)
    for why, keys in by_reason.items():
        warnings.warn(f"{', '.join(keys)}: {why}", SmallSubsetWarning, stacklevel=3)
    return report


# -- the entry point ----------------------------------------------------------------------------------
def analyze(
    latents,
    labels,
    *,
    manifold=None,
    classifier=None,
    logits=None,
    classes=None,
    k: int = 20,
    max_entropy_samples: int = 5000,
    entropy_floor: float | None = None,
    seed: int = 0,
    gmm: bool = False,
    gmm_max_samples: int = 2000,
    bimodality_threshold: float = BIMODALITY_THRESHOLD,
    min_class_size: int = 2,
    max_fisher_samples: int | None = None,
    fisher_curvature: bool | None = None,
    fisher_min_prob: float = 1e-8,
    gw_restarts: int = 10,
    groups: Iterable[str] | None = None,
) -> CollapseReport:
    r"""Collapse, ETF, hypercube, entropy, Fisher-geometry and transport figures of classifier latents.

    All figures use the true labels.

    Parameters
    ----------
    latents : numpy.ndarray or torch.Tensor, shape (N, d)
        Penultimate latents; float16/bfloat16/float32/float64 (or integer), any torch device. Computed in
        float64 on the input's device (CPU for numpy and MPS).
    labels : array-like, shape (N,)
        True labels: integers, integral floats, booleans or strings; mapped to ``0..K-1`` in sorted order
        (numeric order for strings that are all decimal integers, "2" before "10"; integers up to
        2**64 - 1 are kept exactly).
    manifold : geoopt manifold or None
        ``None`` (Euclidean), ``geoopt.Sphere``, ``geoopt.PoincareBall(c)``, ``SphereProjection`` or
        ``Stereographic``: distances, centres and norms then use that geometry (see
        :mod:`lpc_geom.analysis.geometry`; stereographic distances are in units where the metric at the
        origin is Euclidean, so ``PoincareBall(c)`` tends to the Euclidean report as ``c -> 0``).
    classifier : (W, b), W, nn.Linear, or nn.Module, optional
        The final layer, mapping latents to the network's logits. Enables ``nc3``, ``nc4`` and the
        ``fisher_*`` figures.

        * Linear: ``(W, b)``, ``(W,)`` or ``W`` with ``W`` of shape (K_out, d), an ``nn.Linear`` (with
          its own forward), or a non-module object with ``.weight``/``.bias``: :math:`f(z) = Wz + b`, and
          the Fisher figures use the closed forms of :func:`~lpc_geom.analysis.fisher.fisher_pointwise`.
        * Any other ``nn.Module`` (a manifold head's classifier: ``HyperbolicMLR``, ``HyperbolicPrototypes``,
          ``SphereClassifier``, a cosine classifier): called on the latents. A float64 CPU copy in eval
          mode is used (``copy.deepcopy(module).to("cpu", torch.float64).eval()``; the module passed is
          not modified), so the Fisher figures come from autograd
          (:func:`~lpc_geom.analysis.fisher.fisher_pointwise_autograd`) and ``nc4`` from the module's own
          outputs. Its ``.weight``, when it is a (K_out, d) array, gives ``nc3`` (the head's class rows,
          e.g. the MLR normals). The module must return the network's logits: ``SphereHead`` multiplies
          its classifier's cosines by ``head.radius``, so pass a module that includes that scale.
    logits : array (N, K_out), optional
        Network outputs; enable ``nc4`` (used instead of the classifier for it).
    classes : sequence, optional
        The class of each classifier output (row of W, column of ``logits``), in output order, e.g.
        ``classes=["cat", "dog", "eel"]``. Needed whenever the labels cannot index the outputs
        themselves: integer labels (or decimal-integer strings) in ``0..K_out-1`` do; string labels, or
        integers outside that range, with a classifier or logits and no ``classes`` raise ``ValueError``
        (sorted order would be a guess). Every label class must be named; outputs without samples are
        allowed.
    k : int
        Neighbour order of the entropy estimate (default 20).
    max_entropy_samples : int
        Seeded subsample cap of the entropy estimate (default 5,000).
    entropy_floor : float, optional
        Distance floor of the entropy estimate (default: the input's resolution ``eps * RMS ||z||``).
    seed : int
        Seed of every subsample and of the Gromov-Wasserstein random starts.
    gmm : bool
        Also fit the paper's per-unit 2-component GMMs. Opt-in because they are slow: one
        ``sklearn.mixture.GaussianMixture`` fit per unit, about 30 ms each on the 2,000-row subsample
        (measured: 1.8 s at d = 64, about 15 s at d = 512, which alone would take half the 30 s budget).
    gmm_max_samples : int
        Rows used by each GMM fit (seeded subsample).
    bimodality_threshold : float
        Threshold on the bimodality coefficient, in (0, 1) (default 5/9; the coefficient lies in (0, 1],
        so thresholds outside that interval make the figure a constant, see
        :func:`~lpc_geom.analysis._validation.check_bimodality_threshold`).
    min_class_size : int
        Classes with fewer samples raise ``ValueError`` (default 2, at least 1; see below).
    max_fisher_samples : int, optional
        The pointwise Fisher figures (all ``fisher_*`` keys except the Fisher-Rao distances) are computed
        on a seeded subsample of at most this many latents, drawn like the entropy's
        (``numpy.random.default_rng(seed)``, without replacement); their number is reported as
        ``fisher_samples``. Default: 2,000 for a linear head (closed forms, about 2.8 ms per point at
        K = 100, d = 512), 500 for a module head or sphere latents (autograd, up to 9 ms per point).
        The Fisher-Rao distances between class-mean predictive distributions always use all N latents.
    fisher_curvature : bool, optional
        Compute ``fisher_scalar_curvature``. Default: always for the closed forms; through autograd only
        when ``K_out * d <= 320`` (it needs every point's (K, d, d) Hessian; 1.1 ms per point at K = 10,
        d = 32, 180 ms at K = 100, d = 32). When not computed the two curvature keys are NaN with the
        reason in ``report.undefined``.
    fisher_min_prob : float
        Points whose smallest class probability is below this are masked from the log-volume and
        curvature means (float64 loses them: see :mod:`lpc_geom.analysis.fisher`); default 1e-8.
    gw_restarts : int
        Random starts of the Gromov-Wasserstein solver for ``gw_hypercube`` (besides its structured
        starts; :func:`~lpc_geom.analysis.transport.gw_distance`).
    groups : str or iterable of str, optional
        Metric groups to compute: one name (``groups="collapse"``) or several (default: all registered
        default groups, see :func:`metric_groups`).

    Returns
    -------
    CollapseReport
        ``to_dict()`` keys, where they apply:

        * always: ``N``, ``K``, ``d``;
        * ``collapse``: ``sigma_w``, ``sigma_w_rel``, ``norm_cv``, ``nc1``, ``nc2_equinorm``,
          ``nc2_equiangular``, ``nc2_maxangle``, ``etf_distance``, ``nc3`` (with a ``classifier`` that
          has weights), ``nc4`` (with ``classifier`` or ``logits``);
        * ``separation``: ``separation_ratio``, ``separation_ratio_median``, ``separation_ratio_excluded``;
        * ``entropy``: ``entropy``, ``entropy_floored``, ``entropy_scale_free``;
        * ``hypercube``: ``hypercube_bimodality_fraction``, ``hypercube_sign_agreement``,
          ``hypercube_vertex_residual``, ``hypercube_min_hamming``, ``hypercube_distinct_codes``, and with
          ``gmm=True`` ``hypercube_gmm_score``, ``hypercube_gmm_std``, ``hypercube_gmm_peak_ratio``;
        * ``fisher`` (with ``classifier`` only): for the pull-back Fisher metric
          :math:`G(z) = J^\top(\mathrm{diag}\,p - pp^\top)J` of :math:`p = \mathrm{softmax}(f(z))`,
          on the subsample: ``fisher_logvol_mean`` (mean of :math:`\tfrac12\log\mathrm{pdet}\,G` over
          unmasked points), ``fisher_trace_mean`` (mean of :math:`\mathrm{tr}\,G` over all of them),
          ``fisher_scalar_curvature`` and ``fisher_scalar_curvature_std`` (mean and std over unmasked
          points; :math:`(K-1)(K-2)/4` everywhere when d = K - 1 and the centred W is injective),
          ``fisher_masked_fraction``, ``fisher_rank`` (int: rank of G, below the intrinsic dimension when
          the head is rank-deficient, e.g. d > K - 1), ``fisher_samples`` (int: points used); over all N:
          ``fisher_rao_classmean_min``, ``fisher_rao_classmean_mean`` (Fisher-Rao distance
          :math:`2\arccos\sum_k\sqrt{\bar p_{ck}\bar p_{c'k}}` between class-mean predictive
          distributions, min and mean over class pairs, in :math:`[0, \pi]`). Definitions as
          :func:`~lpc_geom.analysis.fisher.fisher_summary`. When every point is masked (a confident
          network far from its decision boundaries) ``fisher_logvol_mean`` and the curvature keys are NaN
          with the reason in ``report.undefined``; the trace and Fisher-Rao keys stay. On the sphere the
          metric is restricted to the sphere's tangent spaces (autograd through :math:`z/\|z\|`); on
          stereographic models it is computed in the latents' own coordinates (the pull-back metric does
          not involve the latent metric);
        * ``transport``: ``gw_etf`` and ``gw_hypercube``, Gromov-Wasserstein discrepancies (square loss,
          mean-normalised distance matrices, :mod:`~lpc_geom.analysis.transport`) between the K class
          centres, with their geodesic distances in ``manifold``, and the regular simplex with K vertices
          (``gw_etf``: in closed form, :math:`\tfrac{K-1}{K}\mathrm{CV}^2` of the pairwise centre
          distances, the exact minimum that :func:`~lpc_geom.analysis.transport.gw_etf`'s solver reaches
          from above; 0 for an ETF and for any K = 2) or the sign-code configuration of the centres
          (``gw_hypercube``, :func:`~lpc_geom.analysis.transport.gw_hypercube`: 0 when the centres sit on
          the vertices of an axis-aligned cube centred at the origin). Centre coordinates that are 0 in
          exact arithmetic (the hypercube figures' zero test) are set to 0 first, and a 0 reads as code +1.

        Formulas and ranges are in the docstrings of :mod:`~lpc_geom.analysis.collapse`,
        :mod:`~lpc_geom.analysis.entropy`, :mod:`~lpc_geom.analysis.hypercube`,
        :mod:`~lpc_geom.analysis.fisher` and :mod:`~lpc_geom.analysis.transport`. Figures undefined for
        the data are NaN with the reason in ``report.undefined`` (e.g. ``norm_cv`` on the sphere, the
        cosines when two class means coincide with their mean, ``separation_ratio`` when every class is a
        single point, ``entropy`` when N <= k, the GW figures when all class centres coincide). Duplicated
        or fully collapsed latents give finite figures otherwise. Figures that rest on fewer than 10 %
        (:data:`~lpc_geom.analysis._validation.SMALL_SUBSET_FRACTION`) of the points they summarise --
        the Fisher log-volume and curvature when most points are masked, the separation ratio when most
        samples sit on their class centre -- keep their value, with the reason in ``report.notes`` and a
        :class:`~lpc_geom.analysis._validation.SmallSubsetWarning`.

    Raises
    ------
    TypeError
        Latents/labels/classifier of the wrong kind, mixed-type labels, an unsupported manifold, a
        classifier module that cannot be copied to float64 or does not return a logits tensor.
    ValueError
        NaN/Inf in latents, logits or classifier (or in a classifier module's outputs); latents not 2-D,
        N < 2 or d = 1; a label count mismatch; a single class; labels that cannot be mapped (non-integral
        floats, NaN) or matched to the classifier's outputs; points off the sphere or outside the Poincaré
        ball; a class with fewer than ``min_class_size`` samples. With one sample the class mean *is* the
        sample: its separation ratio is 0/0 and its within-class scatter is 0 by construction; pass
        ``min_class_size=1`` to accept that (the sample is then counted in ``separation_ratio_excluded``).
        Out-of-range options: ``k``, ``min_class_size``, ``max_fisher_samples`` below 1,
        ``max_entropy_samples`` or ``gmm_max_samples`` below 2, ``gw_restarts`` or ``seed`` below 0,
        ``bimodality_threshold`` outside (0, 1), ``fisher_min_prob`` outside [0, 1), ``entropy_floor`` not
        positive, NaN/Inf in any of them; an empty or unknown ``groups`` (the accepted names are listed).

    Every option is checked before any work, by the validators of :mod:`lpc_geom.analysis._validation`:
    a ``TypeError`` for the wrong kind of value (a string or number where a bool is expected, a bool or
    float where a count is expected: ``gmm="no"``, ``min_class_size=2.5``), a ``ValueError`` for a value
    out of range; the message names the option, the value and what is accepted.
    """
    k, max_entropy_samples, seed, entropy_floor = check_entropy_options(k, max_entropy_samples, seed, entropy_floor)
    options = {
        "k": k,
        "max_entropy_samples": max_entropy_samples,
        "entropy_floor": entropy_floor,
        "seed": seed,
        "gmm": check_bool(gmm, "gmm"),
        "gmm_max_samples": check_int(gmm_max_samples, "gmm_max_samples", minimum=2),
        "bimodality_threshold": check_bimodality_threshold(bimodality_threshold),
        "max_fisher_samples": check_int(max_fisher_samples, "max_fisher_samples", minimum=1, allow_none=True),
        "fisher_curvature": check_bool(fisher_curvature, "fisher_curvature", allow_none=True),
        "fisher_min_prob": check_real(fisher_min_prob, "fisher_min_prob", low=0.0, high=1.0, high_open=True),
        "gw_restarts": check_int(gw_restarts, "gw_restarts", minimum=0),
    }
    selected = check_groups(groups, _GROUPS)
    out_classes = None if classes is None else check_output_classes(classes)
    geom, z, eps, enc, codes = prepare_inputs(latents, labels, manifold, min_class_size)
    head = clf = None
    if classifier is not None:
        head = check_head(classifier, z)
        align_to_classes(head.n_out, enc, "classifier", out_classes)
        if head.weight is not None:
            clf = (head.weight, head.bias)
    L = None
    if logits is not None:
        L = check_logits(logits, z.shape[0], z.device)
        align_to_classes(L.shape[1], enc, "logits", out_classes)
    if out_classes is not None and head is None and L is None:
        raise ValueError("classes names the classes of a classifier's outputs: pass it with classifier= or logits=")
    stats = statistics_from_arrays(geom, z, eps, enc, codes)
    ctx = AnalysisContext(
        stats=stats,
        encoded=enc,
        classifier=clf,
        head=head,
        logits=L,
        manifold=manifold,
        options=options,
        output_classes=out_classes,
    )
    return build_report(ctx, selected)
