r"""Binary encoding (hypercube) figures: do the class means sit on the vertices of an axis-aligned cube?

At latent point collapse each penultimate unit tends to take one of two values symmetric about 0, so the
class points are vertices of a hypercube (the binary encoding of latent point collapse). These figures are **basis- and
origin-dependent by design**: they read the units of the (uncentred) chart coordinates, so a rotated or
translated cube fails them. For K = 4, d = 3 the regular tetrahedron is both a simplex ETF and a set of
cube vertices.

Cheap figures (moment-based, also produced by the streaming accumulator):

* ``bimodality_fraction``: fraction of units whose bimodality coefficient
  :math:`b_j = (g_j^2 + 1)/\kappa_j` exceeds ``threshold`` (default 5/9, the value of a uniform law).
  :math:`g_j` is the skewness and :math:`\kappa_j` the (non-excess) kurtosis of unit :math:`j` over all
  samples, population moments. :math:`b \in (0, 1]`: 1 for a two-point law, 1/3 for a Gaussian.
* ``sign_agreement``: fraction of (sample, unit) pairs whose sign equals the sign of the class mean.
* ``vertex_residual``: mean over classes of :math:`\|\mu_c - a_c \operatorname{sign}(\mu_c)\| / \|\mu_c\|`,
  :math:`a_c = \operatorname{mean}_j |\mu_{cj}|`.
* ``min_hamming``: smallest Hamming distance between the sign codes :math:`\operatorname{sign}(\mu_c)`
  of two classes; ``distinct_codes``: number of distinct codes.

Paper figures (opt-in, slow: one ``sklearn.mixture.GaussianMixture`` fit per unit): a 2-component GMM per
unit gives the mean log-likelihood (``gmm_score``), the mean component std (``gmm_std``) and the distance
between the two component means over the mean component std (``gmm_peak_ratio``).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch

from lpc_geom.analysis._validation import (
    UndefinedMetricError,
    check_bimodality_threshold,
    check_int,
    check_real,
    check_seed,
)
from lpc_geom.analysis.collapse import ClassStatistics, as_statistics
from lpc_geom.analysis.options import AnalyzeOptions

__all__ = [
    "GMMFigures",
    "bimodality_fraction",
    "distinct_codes",
    "gmm_figures",
    "min_hamming",
    "sign_agreement",
    "vertex_residual",
]

BIMODALITY_THRESHOLD = AnalyzeOptions.bimodality_threshold
"""Default threshold on the bimodality coefficient, 5/9 (:class:`~lpc_geom.analysis.options.AnalyzeOptions`)."""


def _constant_units(mean: torch.Tensor, m2: torch.Tensor, eps: float) -> torch.Tensor:
    """Units whose spread is below the input's resolution (their moments are rounding noise)."""
    std = m2.clamp_min(0.0).sqrt()
    return std <= 8.0 * eps * mean.abs()


def bimodality_coefficients(s: ClassStatistics) -> torch.Tensor:
    """Per-unit :math:`b_j = (g_j^2 + 1)/\\kappa_j`, NaN for units that are constant (to input resolution)."""
    m2 = s.unit_m2
    const = _constant_units(s.unit_mean, m2, s.eps) | (m2 <= 0)
    safe = torch.where(const, torch.ones_like(m2), m2)
    g2 = s.unit_m3**2 / safe**3
    kurt = s.unit_m4 / safe**2
    b = (g2 + 1.0) / kurt
    return torch.where(const, torch.full_like(b, float("nan")), b.clamp(max=1.0))


def bimodality_fraction(latents, labels=None, *, manifold=None, threshold: float = BIMODALITY_THRESHOLD) -> float:
    r"""Fraction of units with bimodality coefficient :math:`b_j > \mathrm{threshold}`.

    :math:`b_j = (g_j^2 + 1)/\kappa_j` with population skewness :math:`g_j = m_3/m_2^{3/2}` and kurtosis
    :math:`\kappa_j = m_4/m_2^2` of unit :math:`j` over all samples. Units constant to the input's
    resolution count as not bimodal. Range :math:`[0, 1]`; 1 for an exact hypercube, about 0 for
    Gaussian latents (:math:`b = 1/3`). ``threshold`` must lie in (0, 1)
    (:func:`~lpc_geom.analysis._validation.check_bimodality_threshold`).
    """
    threshold = check_bimodality_threshold(threshold, "threshold")
    s = as_statistics(latents, labels, manifold)
    b = bimodality_coefficients(s)
    return float((b > threshold).double().mean())


# Worst-case relative rounding error, per summand, of a float64 class mean (see class_codes).
_CODE_ZERO = 4.0 * float(np.finfo(np.float64).eps)


def class_codes(s: ClassStatistics) -> torch.Tensor:
    r"""Sign codes :math:`\mathrm{sign}(\mu_c) \in \{-1, 0, 1\}^{K \times d}`, exact zeros recognised.

    A class mean that is 0 in exact arithmetic (symmetric or quantised data: e.g. a class with values
    -2, 0, 2 on a unit) comes out of float64 summation as rounding noise whose size and *sign* depend on
    the summation order, so the in-memory analysis and the streamed one (different orders, different
    batchings) would give it different signs. A coordinate counts as 0 when it is below the worst-case
    rounding error of averaging that class's values,

    .. math::

        |\mu_{cj}| \le 4\,\varepsilon_{64}\, n_c \max_{i: y_i = c} |u_{ij}|,

    with :math:`n_c` the class size and :math:`\varepsilon_{64} = 2.2\cdot10^{-16}` (the residues of exactly
    cancelling classes, in memory and streamed in any batching, stay well below this bound; tested). The scale is the
    class's own: a unit used by one class only, or a class whose values are tiny next to the others' on
    that unit, is judged against the values actually averaged, not against the unit's overall size. A
    non-zero mean below this bound is indistinguishable from 0 in float64.
    """
    tol = _CODE_ZERO * s.counts[:, None] * s.abs_max
    code = torch.sign(s.means)
    return torch.where(s.means.abs() <= tol, torch.zeros_like(code), code)


def sign_agreement(latents, labels=None, *, manifold=None) -> float:
    r"""Fraction of (sample, unit) pairs with :math:`\operatorname{sign}(z_{ij}) = \operatorname{sign}(\mu_{y_i j})`.

    Range :math:`[0, 1]`; 1 when every sample lies in its class mean's orthant (a collapsed hypercube;
    also any collapsed configuration whose means have no zero coordinate), 1/2 for noise.
    """
    s = as_statistics(latents, labels, manifold)
    code = class_codes(s)
    zero = s.counts[:, None] - s.sign_pos - s.sign_neg
    agree = torch.where(code > 0, s.sign_pos, torch.where(code < 0, s.sign_neg, zero))
    return float(agree.sum()) / (s.n * s.d)


def vertex_residual(latents, labels=None, *, manifold=None) -> float:
    r"""Vertex residual, mean over classes of :math:`\|\mu_c - a_c\,\mathrm{sign}(\mu_c)\| / \|\mu_c\|`.

    :math:`a_c = \mathrm{mean}_j|\mu_{cj}|`; a zero coordinate (see :func:`class_codes`) is compared with
    :math:`+a_c` (both vertices are :math:`a_c` away).

    The relative distance of each class mean from the nearest point with all coordinates of equal
    magnitude (a vertex of a cube centred at the origin). Range :math:`[0, 1]`; 0 for exact hypercube
    vertices. Classes whose mean is the origin have no vertex and are left out of the average;
    undefined when all are.
    """
    s = as_statistics(latents, labels, manifold)
    mu = s.means
    norm = mu.norm(dim=1)
    ok = norm > 0
    if not bool(ok.any()):
        raise UndefinedMetricError("every class mean is at the origin: no hypercube vertex to compare with")
    a = mu.abs().mean(dim=1, keepdim=True)
    code = class_codes(s)
    vertex = a * torch.where(code == 0, torch.ones_like(code), code)  # a zero coordinate is a away from +-a
    res = (mu - vertex).norm(dim=1)[ok] / norm[ok]
    return float(res.clamp(max=1.0).mean())


def _code_agreements(code: torch.Tensor) -> torch.Tensor:
    """(K, K) number of units on which two class codes agree (symbols -1, 0, +1)."""
    agree = torch.zeros(code.shape[0], code.shape[0], dtype=torch.float64, device=code.device)
    for sym in (-1.0, 0.0, 1.0):  # three symbols, not a loop over classes or samples
        ind = (code == sym).double()
        agree += ind @ ind.T
    return agree


def min_hamming(latents, labels=None, *, manifold=None) -> int:
    r"""Smallest Hamming distance between two class sign codes.

    :math:`\min_{c \ne c'} \#\{j : \mathrm{sign}\,\mu_{cj} \ne \mathrm{sign}\,\mu_{c'j}\}`.

    Range :math:`\{0, \dots, d\}`; 0 when two classes share a code (the cube cannot tell them apart).
    """
    s = as_statistics(latents, labels, manifold)
    code = class_codes(s)
    ham = s.d - _code_agreements(code)
    ham.fill_diagonal_(float("inf"))
    return round(float(ham.min()))


def distinct_codes(latents, labels=None, *, manifold=None) -> int:
    """Number of distinct class sign codes; range :math:`\\{1, \\dots, K\\}`, K when every class has its own vertex."""
    s = as_statistics(latents, labels, manifold)
    return int(torch.unique(class_codes(s), dim=0).shape[0])


class GMMFigures(NamedTuple):
    """Mean over units of the per-unit 2-GMM figures, and the number of units fitted."""

    score: float
    std: float
    peak_ratio: float
    n_units: int


def gmm_figures(
    latents,
    *,
    max_samples: int = 2000,
    seed: int = 0,
    eps: float | None = None,
    reg_covar: float = 1e-6,
) -> GMMFigures:
    r"""The paper's per-unit two-component Gaussian-mixture figures (slow: one sklearn fit per unit).

    For each unit :math:`j` (on a seeded subsample of at most ``max_samples`` rows) a 2-component
    ``GaussianMixture`` is fitted to the standardised values :math:`x = (z_j - \bar z_j)/s_j`;
    ``reg_covar`` is therefore relative to the unit's std. With component means :math:`m_{1,2}` and stds
    :math:`\sigma_{1,2}` (standardised units):

    * ``score`` = mean over units of the mean log-likelihood of :math:`z_j`,
      ``GaussianMixture.score(x) - log s_j``. Range: any real; grows as the units sharpen.
    * ``std`` = mean over units of :math:`s_j (\sigma_1 + \sigma_2)/2` (latent units). Range :math:`[0, \infty)`.
    * ``peak_ratio`` = mean over units of :math:`|m_1 - m_2| / ((\sigma_1 + \sigma_2)/2)`. Range
      :math:`[0, \infty)`, scale-free; bounded by about :math:`2/\sqrt{\mathrm{reg\_covar}}` for an exact
      two-point unit.

    Units constant to the input's resolution are skipped; undefined when all are. ``latents`` are chart
    coordinates (any array of shape (N, d)); ``eps`` is the input dtype's epsilon (default float64's).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    max_samples, seed = check_int(max_samples, "max_samples", minimum=2), check_seed(seed)
    reg_covar = check_real(reg_covar, "reg_covar", low=0.0)

    x = latents.detach().cpu().numpy() if isinstance(latents, torch.Tensor) else np.asarray(latents, np.float64)
    x = np.asarray(x, dtype=np.float64)
    eps = float(np.finfo(np.float64).eps) if eps is None else eps
    if x.shape[0] > max_samples:
        x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], size=int(max_samples), replace=False))]
    mean = x.mean(0)
    std = x.std(0)
    fit_units = np.flatnonzero(std > 8.0 * eps * np.abs(mean))
    if fit_units.size == 0:
        raise UndefinedMetricError("every unit is constant: no mixture to fit")
    xs = (x[:, fit_units] - mean[fit_units]) / std[fit_units]
    scores, stds, peaks = [], [], []
    unconverged = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for col, j in enumerate(fit_units):  # one sklearn fit per unit; the library has no batched 1-D fit
            gm = GaussianMixture(2, covariance_type="full", reg_covar=reg_covar, random_state=seed)
            v = xs[:, col : col + 1]
            gm.fit(v)
            unconverged += int(not gm.converged_)
            sig = np.sqrt(gm.covariances_.reshape(2))
            mean_sig = float(sig.mean())
            scores.append(gm.score(v) - math.log(std[j]))
            stds.append(std[j] * mean_sig)
            peaks.append(abs(float(gm.means_[0, 0] - gm.means_[1, 0])) / mean_sig)
    if unconverged:
        warnings.warn(
            f"GaussianMixture did not converge on {unconverged} of {fit_units.size} units; their last "
            "EM iterate is included in the gmm figures",
            RuntimeWarning,
            stacklevel=2,
        )
    return GMMFigures(float(np.mean(scores)), float(np.mean(stds)), float(np.mean(peaks)), int(fit_units.size))


def hypercube_group(ctx, out) -> None:
    """The ``hypercube`` group of :func:`~lpc_geom.analysis.analyze` (the GMM figures in memory only)."""
    s, o = ctx.stats, ctx.options
    out.attempt("hypercube_bimodality_fraction", lambda: bimodality_fraction(s, threshold=o.bimodality_threshold))
    out.attempt("hypercube_sign_agreement", lambda: sign_agreement(s))
    out.attempt("hypercube_vertex_residual", lambda: vertex_residual(s))
    out.attempt("hypercube_min_hamming", lambda: min_hamming(s))
    out.attempt("hypercube_distinct_codes", lambda: distinct_codes(s))
    if ctx.in_memory and o.gmm:
        out.attempt(
            ("hypercube_gmm_score", "hypercube_gmm_std", "hypercube_gmm_peak_ratio"),
            lambda: gmm_figures(s.chart, max_samples=o.gmm_max_samples, seed=o.seed, eps=s.eps)[:3],
        )
