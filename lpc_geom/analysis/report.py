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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lpc_geom.analysis._registry import (
    AnalysisContext,
    MetricCollector,
    MetricGroup,
    Number,
    metric_groups,
    register_metric_group,
    selected_groups,
    warn_small_subsets,
)
from lpc_geom.analysis._validation import (
    align_to_classes,
    check_head,
    check_logits,
    check_output_classes,
)
from lpc_geom.analysis.collapse import prepare_inputs, statistics_from_arrays
from lpc_geom.analysis.options import AnalyzeOptions

__all__ = [
    "AnalysisContext",
    "CollapseReport",
    "MetricCollector",
    "MetricGroup",
    "analyze",
    "metric_groups",
    "register_metric_group",
]


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

    def to_dict(self, *, reasons: bool = False) -> dict[str, Any]:
        """``N``, ``K``, ``d``, then every figure (NaN where undefined): flat ``str -> float/int``.

        With ``reasons=True`` two more entries follow the figures: ``"undefined"`` and ``"notes"``, the
        ``name -> reason`` dicts of :attr:`undefined` and :attr:`notes` (the form written to a run's
        ``report_<split>.json``, so that a file keeps why a figure is NaN or rests on few points).
        """
        out: dict[str, Any] = {"N": self.N, "K": self.K, "d": self.d, **self.metrics}
        if reasons:
            out["undefined"] = dict(self.undefined)
            out["notes"] = dict(self.notes)
        return out

    def to_json(self, indent: int | None = 2, *, reasons: bool = False) -> str:
        """Strict JSON of :meth:`to_dict` (NaN and infinities become ``null``)."""
        clean = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in self.to_dict(reasons=reasons).items()
        }
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


def build_report(ctx: AnalysisContext, groups: list[MetricGroup]) -> CollapseReport:
    """Run metric groups (from :func:`~lpc_geom.analysis._registry.selected_groups`) on a context and
    collect a :class:`CollapseReport`; one :class:`~lpc_geom.analysis._validation.SmallSubsetWarning` per
    distinct note."""
    s = ctx.stats
    report = CollapseReport(N=s.n, K=s.n_classes, d=s.d, geometry=s.geometry.name, classes=tuple(s.classes.tolist()))
    for group in groups:
        out = MetricCollector()
        group.compute(ctx, out)
        if out.values:
            notes = {k: v for k, v in out.notes.items() if k in out.values and k not in out.undefined}
            report.add(group.name, out.values, out.undefined, notes)
    warn_small_subsets(report.notes, stacklevel=3)
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
    k: int = AnalyzeOptions.k,
    max_entropy_samples: int = AnalyzeOptions.max_entropy_samples,
    entropy_floor: float | None = AnalyzeOptions.entropy_floor,
    seed: int = AnalyzeOptions.seed,
    gmm: bool = AnalyzeOptions.gmm,
    gmm_max_samples: int = AnalyzeOptions.gmm_max_samples,
    bimodality_threshold: float = AnalyzeOptions.bimodality_threshold,
    min_class_size: int = AnalyzeOptions.min_class_size,
    max_fisher_samples: int | None = AnalyzeOptions.max_fisher_samples,
    fisher_curvature: bool | None = AnalyzeOptions.fisher_curvature,
    fisher_min_prob: float = AnalyzeOptions.fisher_min_prob,
    gw_restarts: int = AnalyzeOptions.gw_restarts,
    groups: Iterable[str] | None = None,
    options: AnalyzeOptions | None = None,
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
    k, max_entropy_samples, entropy_floor, seed : optional
        The entropy estimate's options, and the seed of every subsample and of the Gromov-Wasserstein
        random starts: see :class:`~lpc_geom.analysis.options.AnalyzeOptions` for each option's default
        and accepted values.
    gmm, gmm_max_samples, bimodality_threshold : optional
        The hypercube figures' options (:class:`~lpc_geom.analysis.options.AnalyzeOptions`).
    min_class_size : int, optional
        Classes with fewer samples raise ``ValueError`` (see
        :class:`~lpc_geom.analysis.options.AnalyzeOptions` and below).
    max_fisher_samples, fisher_curvature, fisher_min_prob : optional
        The Fisher figures' subsample cap, curvature switch and mask threshold
        (:class:`~lpc_geom.analysis.options.AnalyzeOptions`).
    gw_restarts : int, optional
        Random starts of the Gromov-Wasserstein solver for ``gw_hypercube``
        (:class:`~lpc_geom.analysis.options.AnalyzeOptions`).
    groups : str or iterable of str, optional
        Metric groups to compute: one name (``groups="collapse"``) or several (default: all registered
        default groups, see :func:`metric_groups`).
    options : AnalyzeOptions, optional
        All analyzer options at once, instead of the keywords above (a ``TypeError`` when both are given).

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

    Notes
    -----
    Every option is checked before any work (by :class:`~lpc_geom.analysis.options.AnalyzeOptions`, with the
    validators of :mod:`lpc_geom.analysis._validation`): a ``TypeError`` for the wrong kind of value (a string
    or number where a bool is expected, a bool or float where a count is expected: ``gmm="no"``,
    ``min_class_size=2.5``), a ``ValueError`` for a value out of range; the message names the option, the value
    and what is accepted.
    """
    keywords = AnalyzeOptions(
        k=k, max_entropy_samples=max_entropy_samples, entropy_floor=entropy_floor, seed=seed, gmm=gmm,
        gmm_max_samples=gmm_max_samples, bimodality_threshold=bimodality_threshold, min_class_size=min_class_size,
        max_fisher_samples=max_fisher_samples, fisher_curvature=fisher_curvature, fisher_min_prob=fisher_min_prob,
        gw_restarts=gw_restarts,
    )  # fmt: skip
    if options is None:
        options = keywords
    elif not isinstance(options, AnalyzeOptions):
        raise TypeError(f"options must be an AnalyzeOptions; got {type(options).__name__}")
    elif keywords != AnalyzeOptions():
        raise TypeError("pass the analyzer options either as keywords or as options=AnalyzeOptions(...), not both")
    selected = selected_groups(groups)
    out_classes = None if classes is None else check_output_classes(classes)
    geom, z, eps, enc, codes = prepare_inputs(latents, labels, manifold, options.min_class_size)
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
    # A linear head's outputs come with the statistics' second pass when a built-in group reads them (nc4
    # without given logits, the Fisher-Rao distances): one product with the mean axes instead of another pass.
    names = {g.name for g in selected}
    linear = None
    if head is not None and head.linear and ("fisher" in names or ("collapse" in names and L is None)):
        linear = (head.weight, head.bias)
    ctx = AnalysisContext(
        stats=statistics_from_arrays(geom, z, eps, enc, codes, linear),
        encoded=enc,
        classifier=clf,
        head=head,
        logits=L,
        manifold=manifold,
        options=options,
        output_classes=out_classes,
    )
    return build_report(ctx, selected)
