"""``AnalyzeOptions``: every option of the analyzers behind :func:`~lpc_geom.analysis.analyze`, with its default.

The defaults are stated here once: :func:`~lpc_geom.analysis.analyze`'s keywords,
:class:`~lpc_geom.analysis.CollapseAccumulator` and the module constants
:data:`~lpc_geom.analysis.hypercube.BIMODALITY_THRESHOLD`, :data:`~lpc_geom.analysis.fisher.DEFAULT_MIN_PROB`
and :data:`~lpc_geom.analysis.transport.DEFAULT_RESTARTS` read them from :class:`AnalyzeOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lpc_geom.analysis._validation import (
    check_bimodality_threshold,
    check_bool,
    check_entropy_options,
    check_int,
    check_real,
)

__all__ = ["AnalyzeOptions"]


@dataclass(frozen=True)
class AnalyzeOptions:
    r"""The analyzer options of :func:`~lpc_geom.analysis.analyze`, checked once when constructed.

    Every metric group reads its options from here (``ctx.options`` of a group); a value of the wrong kind
    raises ``TypeError`` (a string or number where a bool is expected, a bool or float where a count is
    expected: ``gmm="no"``, ``min_class_size=2.5``), a value out of range ``ValueError``; the message names
    the option, the value and what is accepted.

    Attributes
    ----------
    k : int
        Neighbour order of the entropy estimate, at least 1.
    max_entropy_samples : int
        Seeded subsample cap of the entropy estimate, at least 2.
    entropy_floor : float or None
        Distance floor of the entropy estimate, positive; ``None``: the input's resolution
        ``eps * RMS ||z||``.
    seed : int
        Seed (>= 0) of every subsample and of the Gromov-Wasserstein random starts.
    gmm : bool
        Also fit the paper's per-unit 2-component GMMs (one ``sklearn.mixture.GaussianMixture`` fit per
        unit, the slowest figures of the report: opt-in).
    gmm_max_samples : int
        Rows used by each GMM fit (seeded subsample), at least 2.
    bimodality_threshold : float
        Threshold on the bimodality coefficient, in (0, 1) (the coefficient lies in (0, 1], so thresholds
        outside that interval make the figure a constant, see
        :func:`~lpc_geom.analysis._validation.check_bimodality_threshold`).
    min_class_size : int
        Classes with fewer samples are refused (at least 1; see :func:`~lpc_geom.analysis.analyze`).
    max_fisher_samples : int or None
        Cap (>= 1) on the latents of the pointwise Fisher figures, a seeded subsample drawn like the
        entropy's (``numpy.random.default_rng(seed)``, without replacement). ``None``:
        :data:`~lpc_geom.analysis.fisher.group.FISHER_SAMPLES_LINEAR` for a linear head (closed forms),
        :data:`~lpc_geom.analysis.fisher.group.FISHER_SAMPLES_AUTOGRAD` for a module head or sphere latents
        (autograd). The Fisher-Rao distances between class-mean predictive distributions always use all N
        latents.
    fisher_curvature : bool or None
        Compute ``fisher_scalar_curvature``. ``None``: always for the closed forms; through autograd only
        when ``K_out * d`` is at most
        :data:`~lpc_geom.analysis.fisher.group.FISHER_AUTOGRAD_CURVATURE_MAX_KD` (it needs every point's
        (K, d, d) Hessian).
    fisher_min_prob : float
        Points whose smallest class probability is below this are masked from the log-volume and curvature
        means (float64 loses them: see :mod:`lpc_geom.analysis.fisher`); in [0, 1).
    gw_restarts : int
        Random starts (>= 0) of the Gromov-Wasserstein solver for ``gw_hypercube``, besides its structured
        starts (:func:`~lpc_geom.analysis.transport.gw_distance`).
    """

    k: int = 20
    max_entropy_samples: int = 5000
    entropy_floor: float | None = None
    seed: int = 0
    gmm: bool = False
    gmm_max_samples: int = 2000
    bimodality_threshold: float = 5.0 / 9.0
    min_class_size: int = 2
    max_fisher_samples: int | None = None
    fisher_curvature: bool | None = None
    fisher_min_prob: float = 1e-8
    gw_restarts: int = 10

    def __post_init__(self) -> None:
        k, max_entropy_samples, seed, entropy_floor = check_entropy_options(
            self.k, self.max_entropy_samples, self.seed, self.entropy_floor
        )
        checked = {
            "k": k,
            "max_entropy_samples": max_entropy_samples,
            "entropy_floor": entropy_floor,
            "seed": seed,
            "gmm": check_bool(self.gmm, "gmm"),
            "gmm_max_samples": check_int(self.gmm_max_samples, "gmm_max_samples", minimum=2),
            "bimodality_threshold": check_bimodality_threshold(self.bimodality_threshold),
            "max_fisher_samples": check_int(self.max_fisher_samples, "max_fisher_samples", minimum=1, allow_none=True),
            "fisher_curvature": check_bool(self.fisher_curvature, "fisher_curvature", allow_none=True),
            "fisher_min_prob": check_real(self.fisher_min_prob, "fisher_min_prob", low=0.0, high=1.0, high_open=True),
            "gw_restarts": check_int(self.gw_restarts, "gw_restarts", minimum=0),
            "min_class_size": check_int(self.min_class_size, "min_class_size", minimum=1),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)
